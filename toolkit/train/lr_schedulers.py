"""Learning-rate schedules as pure functions of the update number (no state to save)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from toolkit.config.ranges import bounded
from toolkit.registry import LR_SCHEDULERS


@dataclass
class WarmupConfig:
    """Fields every schedule shares: a linear warmup from warmup_init_lr_scale * lr to lr."""

    name: str = "constant"
    warmup_updates: int = bounded(0, ge=0)  # updates of linear warmup
    warmup_init_lr_scale: float = bounded(0.0, ge=0)  # warmup starts at this fraction of lr


@dataclass
class ConstantLRConfig(WarmupConfig):
    """Linear warmup, then constant; optionally the last `tail_updates` of max_update at tail_lr_scale * lr."""

    name: str = "constant"
    tail_updates: int = 0  # e.g. the adaptive-span reference's fine-tuning: its last 50k updates at lr / 10
    tail_lr_scale: float = 1.0


@dataclass
class InverseSqrtConfig(WarmupConfig):
    """Linear warmup, then lr * sqrt(warmup / step) (Vaswani et al.)."""

    name: str = "inverse_sqrt"
    warmup_updates: int = bounded(4000, ge=0)


@dataclass
class CosineConfig(WarmupConfig):
    """Linear warmup, then cosine decay to min_lr_scale * lr at max_update."""

    name: str = "cosine"
    min_lr_scale: float = bounded(0.0, ge=0)


@dataclass
class LinearDecayConfig(WarmupConfig):
    """Linear warmup, then linear decay to end_lr_scale * lr at max_update."""

    name: str = "linear"
    end_lr_scale: float = bounded(0.0, ge=0)


Schedule = Callable[[Any, int, int], float]


def with_warmup(after: Schedule) -> Schedule:
    """The multiplier of `after` once warmup is over; during warmup, the linear ramp."""

    def schedule(cfg: Any, step: int, max_update: int) -> float:
        if step < cfg.warmup_updates:
            start = cfg.warmup_init_lr_scale
            return start + (1.0 - start) * (step + 1) / cfg.warmup_updates
        return after(cfg, step, max_update)

    schedule.__doc__ = after.__doc__
    return schedule


def _progress(cfg: Any, step: int, max_update: int) -> float:
    """Fraction of the post-warmup updates done, in [0, 1]."""
    return min(1.0, (step - cfg.warmup_updates) / max(1, max_update - cfg.warmup_updates))


@LR_SCHEDULERS.register("constant", ConstantLRConfig)
@with_warmup
def constant(cfg: Any, step: int, max_update: int) -> float:
    return cfg.tail_lr_scale if cfg.tail_updates and step >= max_update - cfg.tail_updates else 1.0


@LR_SCHEDULERS.register("inverse_sqrt", InverseSqrtConfig)
@with_warmup
def inverse_sqrt(cfg: Any, step: int, max_update: int) -> float:
    return math.sqrt(max(cfg.warmup_updates, 1) / (step + 1))


@LR_SCHEDULERS.register("cosine", CosineConfig)
@with_warmup
def cosine(cfg: Any, step: int, max_update: int) -> float:
    progress = _progress(cfg, step, max_update)
    return cfg.min_lr_scale + (1 - cfg.min_lr_scale) * 0.5 * (1 + math.cos(math.pi * progress))


@LR_SCHEDULERS.register("linear", LinearDecayConfig)
@with_warmup
def linear(cfg: Any, step: int, max_update: int) -> float:
    return 1.0 - (1.0 - cfg.end_lr_scale) * _progress(cfg, step, max_update)
