"""Parameter groups chosen by regex, each with its own optimizer, lr schedule and gradient clipping.

Extra groups are configured as `param_groups.NAME = {params: REGEX, optimizer: {name: ..., ...},
lr_scheduler: {name: ..., ...}, clip_norm: X}`; a parameter joins the first group (in config order) whose
regex matches its name (re.search). Every remaining parameter is in the group `main`, which uses the
top-level `optimizer`, `lr_scheduler` and `clip_norm`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from toolkit.errors import ConfigError
from toolkit.registry import LR_SCHEDULERS, OPTIMIZERS, Registry

MAIN_GROUP = "main"


@dataclass
class ParamGroupConfig:
    """An extra parameter group (see module docstring)."""

    params: str = "???"  # regex matched (re.search) against parameter names
    optimizer: Dict[str, Any] = field(default_factory=lambda: {"name": "adam"})
    lr_scheduler: Dict[str, Any] = field(default_factory=lambda: {"name": "constant"})
    clip_norm: float = 0.0  # gradient-norm clipping of this group alone (0 = off)


def typed_component(registry: Registry[Any], raw: Mapping[str, Any], where: str) -> Any:
    """Validate a {name: ..., ...} mapping against the registered dataclass of that name."""
    name = raw.get("name")
    if name is None:
        raise ConfigError(f"missing required value for key '{where}.name'")
    entry = registry.get(str(name))
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(entry.config_cls), raw)
    except Exception as error:  # noqa: BLE001 - OmegaConf raises several types
        key = getattr(error, "full_key", "") or getattr(error, "key", "")
        raise ConfigError(f"{where}.{key}: {str(error).splitlines()[0]}") from None
    return cfg


@dataclass
class ParamGroup:
    """A named set of parameters with its optimizer and lr schedule."""

    name: str
    names: List[str]
    params: List[nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_cfg: Any
    lr_fn: Callable[[Any, int, int], float]
    base_lr: float
    clip_norm: float

    def set_lr(self, step: int, max_update: int) -> float:
        lr = self.base_lr * self.lr_fn(self.lr_cfg, step, max_update)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


def build_param_groups(
    model: nn.Module,
    main_optimizer: DictConfig,
    main_lr_scheduler: DictConfig,
    main_clip_norm: float,
    extra: Mapping[str, Any],
) -> List[ParamGroup]:
    """Split the model's trainable parameters into groups and build one optimizer per group."""
    specs: list[tuple[str, Optional[re.Pattern[str]], DictConfig, DictConfig, float]] = []
    for name, raw in extra.items():
        if name == MAIN_GROUP:
            raise ConfigError(f"param_groups.{MAIN_GROUP}: the name is reserved for the remaining parameters")
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(ParamGroupConfig), raw)
        except Exception as error:  # noqa: BLE001
            raise ConfigError(f"param_groups.{name}: {str(error).splitlines()[0]}") from None
        if cfg.params == "???":
            raise ConfigError(f"missing required value for key 'param_groups.{name}.params'")
        try:
            pattern = re.compile(cfg.params)
        except re.error as error:
            raise ConfigError(f"param_groups.{name}.params: bad regex '{cfg.params}': {error}") from None
        optimizer = typed_component(OPTIMIZERS, cfg.optimizer, f"param_groups.{name}.optimizer")
        scheduler = typed_component(LR_SCHEDULERS, cfg.lr_scheduler, f"param_groups.{name}.lr_scheduler")
        specs.append((name, pattern, optimizer, scheduler, cfg.clip_norm))
    specs.append((MAIN_GROUP, None, main_optimizer, main_lr_scheduler, main_clip_norm))

    members: Dict[str, list[tuple[str, nn.Parameter]]] = {spec[0]: [] for spec in specs}
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        for gname, pattern, *_ in specs:
            if pattern is None or pattern.search(pname):
                members[gname].append((pname, param))
                break

    groups = []
    for gname, _, opt_cfg, lr_cfg, clip in specs:
        if not members[gname]:
            if gname != MAIN_GROUP:
                raise ConfigError(f"param_groups.{gname}.params matches no parameter of the model")
            continue
        names, params = zip(*members[gname])
        optimizer = OPTIMIZERS.get(opt_cfg.name).builder(opt_cfg, list(params))
        lr_entry = LR_SCHEDULERS.get(lr_cfg.name)
        groups.append(
            ParamGroup(gname, list(names), list(params), optimizer, lr_cfg, lr_entry.builder, opt_cfg.lr, clip)
        )
    return groups
