"""Auxiliary-term weights: the config's `aux_weights` schedules, pure functions of the global step.

A model names its auxiliary terms (ToolkitModel.aux_term_names); the criterion weighs each by its schedule
and the trainer freezes the heads of the terms whose weight is 0 now. No schedule keeps state: the weight at
step s is computed from (s, config), so resuming needs nothing saved. Both the criterions and the trainer read
this module, which depends on neither. A schedule knows nothing about the terms it weighs: a model part
whose terms follow a rule of their own (the aux heads' per-layer cut-offs, toolkit.aux_layer_weights) hands
AuxWeights one plain schedule per term name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolkit.config.cli_overrides import explain
from toolkit.config.ranges import bounded, check_ranges
from toolkit.errors import ConfigError


class ScheduleKind(StrEnum):
    """The shape of a weight over training."""

    constant = "constant"  # `value` throughout
    step_off = "step_off"  # `value` until `end`, then 0
    linear_decay = "linear_decay"  # from `value` linearly to 0 at `end`
    linear_warmup = "linear_warmup"  # from 0 at `start` linearly to `value` at `end`


SCHEDULE_KINDS = tuple(kind.value for kind in ScheduleKind)


@dataclass
class WeightScheduleConfig:
    """A weight over training: `value` until `end` (step_off), or decaying linearly to 0 at `end`."""

    kind: ScheduleKind = ScheduleKind.constant  # constant | step_off | linear_decay | linear_warmup
    value: float = 1.0  # the weight while the schedule is on (start value for linear_decay)
    start: int = bounded(0, ge=0)  # linear_warmup: update where the ramp from 0 starts
    end: Optional[int] = bounded(None, ge=0)  # update where the schedule ends (off / reaches 0 / reaches value)
    end_fraction: Optional[float] = bounded(None, ge=0)  # `end` as a fraction of max_update (used when end is null)


def end_step(cfg: WeightScheduleConfig, max_update: int) -> float:
    if cfg.end is not None:
        return float(cfg.end)
    if cfg.end_fraction is None:
        return float("inf")
    return cfg.end_fraction * max_update


def weight_at(cfg: WeightScheduleConfig, step: int, max_update: int) -> float:
    """The weight at update `step` (0-based count of updates already done)."""
    end = end_step(cfg, max_update)
    if cfg.kind == "constant":
        return cfg.value
    if cfg.kind == "step_off":
        return cfg.value if step < end else 0.0
    if cfg.kind == "linear_decay":
        return cfg.value * max(0.0, 1.0 - step / end) if end > 0 else 0.0
    if cfg.kind == "linear_warmup":
        span = end - cfg.start
        return cfg.value * min(1.0, max(0.0, (step - cfg.start) / span)) if span > 0 else cfg.value
    raise ConfigError(f"unknown schedule kind '{cfg.kind}' (valid: {', '.join(SCHEDULE_KINDS)})")


def typed_schedule(value: Any, where: str) -> WeightScheduleConfig:
    """A schedule from config data (a mapping, or a bare number: a constant), typed and range-checked;
    errors name `where` (e.g. aux_weights.KEY)."""
    cfg = OmegaConf.structured(WeightScheduleConfig)
    try:
        cfg = OmegaConf.merge(cfg, value if isinstance(value, Mapping) else {"value": value})
    except OmegaConfBaseException as error:
        error.full_key = f"{where}.{getattr(error, 'full_key', '') or ''}".rstrip(".")
        raise explain(error, cfg) from None
    check_ranges(cfg, f"{where}.")
    return OmegaConf.to_object(cfg)


class AuxWeights:
    """Maps auxiliary-term names to their schedules. Keys are exact names or regexes (full match).

    `named` holds schedules for exact term names that a model part generated (they come first)."""

    def __init__(
        self, raw: Mapping[str, Any], max_update: int, named: Optional[Mapping[str, WeightScheduleConfig]] = None
    ):
        self.max_update = max_update
        self.named: dict[str, WeightScheduleConfig] = dict(named or {})
        self.rules: list[tuple[re.Pattern[str], WeightScheduleConfig]] = []
        if isinstance(raw, DictConfig):  # resolve ${model.n_layers}-style references against the whole config
            raw = OmegaConf.to_container(raw, resolve=True)
        for key, value in raw.items():
            schedule = typed_schedule(value, f"aux_weights.{key}")
            try:
                pattern = re.compile(key)
            except re.error as error:
                raise ConfigError(f"aux_weights.{key}: not a valid regex ({error})") from None
            self.rules.append((pattern, schedule))

    def weight(self, term: str, step: int) -> Optional[float]:
        """The weight of `term` at `step`, or None when no rule names it."""
        if term in self.named:
            return weight_at(self.named[term], step, self.max_update)
        for pattern, cfg in self.rules:
            if pattern.fullmatch(term):
                return weight_at(cfg, step, self.max_update)
        return None


def active_aux_terms(names: Iterable[str], weights: AuxWeights | None, step: int) -> set[str]:
    """The auxiliary terms whose weight at `step` is non-zero (models may skip computing the others)."""
    if weights is None:
        return set()
    return {name for name in names if (weights.weight(name, step) or 0.0) != 0.0}
