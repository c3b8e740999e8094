"""Registered optimizers (torch.optim), each with a typed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List

import torch
from torch import nn

from toolkit.config.ranges import bounded
from toolkit.registry import OPTIMIZERS


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = bounded(1e-3, ge=0)  # peak learning rate (the lr schedule multiplies it)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = bounded(1e-8, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    sparse: bool = False  # SparseAdam for sparse gradients (e.g. product-key memory values)


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = bounded(1e-3, ge=0)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = bounded(1e-8, ge=0)
    weight_decay: float = bounded(0.01, ge=0)  # decoupled weight decay


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = bounded(0.1, ge=0)
    momentum: float = bounded(0.0, ge=0)
    nesterov: bool = False
    weight_decay: float = bounded(0.0, ge=0)


@dataclass
class AdagradConfig:
    name: str = "adagrad"
    lr: float = bounded(0.07, ge=0)
    eps: float = bounded(1e-10, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    per_tensor_clip: float = bounded(
        0.0, ge=0
    )  # adaptive-span reference: lr * min(1, clip / ||grad_p||) per tensor (0 = off)


Params = Iterable[nn.Parameter]


@OPTIMIZERS.register("adam", AdamConfig)
def adam(cfg: AdamConfig, params: Params) -> torch.optim.Optimizer:
    if cfg.sparse:
        return torch.optim.SparseAdam(list(params), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", AdamWConfig)
def adamw(cfg: AdamWConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd", SGDConfig)
def sgd(cfg: SGDConfig, params: Params) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


class ClippedLRAdagrad(torch.optim.Adagrad):
    """Adagrad whose lr is scaled per tensor by min(1, clip / ||g_p||) (adaptive-span reference).

    Each parameter gets its own param_group so that the scaled lr applies to that tensor alone.
    """

    def __init__(self, params: Params, lr: float, clip: float, **kwargs):
        super().__init__([{"params": [p]} for p in params], lr=lr, **kwargs)
        self.clip = clip

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        groups = [g for g in self.param_groups if g["params"][0].grad is not None]
        if groups:
            norms = torch._foreach_norm([g["params"][0].grad for g in groups])
            for group, norm in zip(groups, norms):
                base = group.setdefault("base_lr", group["lr"])
                group["lr"] = base * min(1.0, self.clip / max(norm.item(), 1e-12))
        loss = super().step(closure)
        for group in groups:
            group["lr"] = group.pop("base_lr")
        return loss


@OPTIMIZERS.register("adagrad", AdagradConfig)
def adagrad(cfg: AdagradConfig, params: Params) -> torch.optim.Optimizer:
    if cfg.per_tensor_clip > 0:
        return ClippedLRAdagrad(params, lr=cfg.lr, clip=cfg.per_tensor_clip, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
