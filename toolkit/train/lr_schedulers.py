"""Learning-rate schedules as pure functions of the update number (no state to save)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolkit.registry import LR_SCHEDULERS


@dataclass
class ConstantLRConfig:
    """Linear warmup from warmup_init_lr, then constant."""

    name: str = "constant"
    warmup_updates: int = 0  # updates of linear warmup
    warmup_init_lr_scale: float = 0.0  # warmup starts at this fraction of lr


@dataclass
class InverseSqrtConfig:
    """Linear warmup, then lr * sqrt(warmup / step) (Vaswani et al.)."""

    name: str = "inverse_sqrt"
    warmup_updates: int = 4000
    warmup_init_lr_scale: float = 0.0


@dataclass
class CosineConfig:
    """Linear warmup, then cosine decay to min_lr_scale * lr at max_update."""

    name: str = "cosine"
    warmup_updates: int = 0
    warmup_init_lr_scale: float = 0.0
    min_lr_scale: float = 0.0


@dataclass
class LinearDecayConfig:
    """Linear warmup, then linear decay to end_lr_scale * lr at max_update."""

    name: str = "linear"
    warmup_updates: int = 0
    warmup_init_lr_scale: float = 0.0
    end_lr_scale: float = 0.0


def _warmup(cfg, step: int) -> float | None:
    if step < cfg.warmup_updates:
        start = cfg.warmup_init_lr_scale
        return start + (1.0 - start) * (step + 1) / cfg.warmup_updates
    return None


@LR_SCHEDULERS.register("constant", ConstantLRConfig)
def constant(cfg, step: int, max_update: int) -> float:
    warm = _warmup(cfg, step)
    return 1.0 if warm is None else warm


@LR_SCHEDULERS.register("inverse_sqrt", InverseSqrtConfig)
def inverse_sqrt(cfg, step: int, max_update: int) -> float:
    warm = _warmup(cfg, step)
    if warm is not None:
        return warm
    return math.sqrt(max(cfg.warmup_updates, 1) / (step + 1))


@LR_SCHEDULERS.register("cosine", CosineConfig)
def cosine(cfg, step: int, max_update: int) -> float:
    warm = _warmup(cfg, step)
    if warm is not None:
        return warm
    progress = min(1.0, (step - cfg.warmup_updates) / max(1, max_update - cfg.warmup_updates))
    return cfg.min_lr_scale + (1 - cfg.min_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))


@LR_SCHEDULERS.register("linear", LinearDecayConfig)
def linear(cfg, step: int, max_update: int) -> float:
    warm = _warmup(cfg, step)
    if warm is not None:
        return warm
    progress = min(1.0, (step - cfg.warmup_updates) / max(1, max_update - cfg.warmup_updates))
    return 1.0 - (1.0 - cfg.end_lr_scale) * progress
