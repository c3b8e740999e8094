"""Numeric ranges declared next to each config field, checked in one pass over a composed config.

A field declares its range with `bounded`:

    max_update: int = bounded(1000, ge=1)  # stop after this many optimizer updates
    dropout: float = bounded(0.1, ge=0, lt=1)

The range lives in the dataclass field's metadata, which OmegaConf and Hydra ignore; `check_ranges` walks a
typed DictConfig (every node remembers its dataclass) and raises a one-line ConfigError for the first value
out of range, naming the key. None (an unset Optional) is never checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from toolkit.errors import ConfigError

RANGE = "range"  # the metadata key


@dataclass(frozen=True)
class Range:
    """Inclusive (ge, le) and exclusive (gt, lt) bounds; None = unbounded on that side."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def problem(self, value: Any) -> Optional[str]:
        """What is wrong with `value` ('must be >= 1'), or None when it is in range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # the type is OmegaConf's business
        if self.ge is not None and not value >= self.ge:
            return f"must be >= {_number(self.ge)}{self._and_upper()}"
        if self.gt is not None and not value > self.gt:
            return f"must be > {_number(self.gt)}{self._and_upper()}"
        if self.le is not None and not value <= self.le:
            return f"must be <= {_number(self.le)}{self._and_lower()}"
        if self.lt is not None and not value < self.lt:
            return f"must be < {_number(self.lt)}{self._and_lower()}"
        if value != value:  # NaN passes no comparison above only when a bound exists
            return "must be a number, not nan"
        return None

    def _and_upper(self) -> str:
        if self.le is not None:
            return f" and <= {_number(self.le)}"
        return f" and < {_number(self.lt)}" if self.lt is not None else ""

    def _and_lower(self) -> str:
        if self.ge is not None:
            return f" and >= {_number(self.ge)}"
        return f" and > {_number(self.gt)}" if self.gt is not None else ""


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def bounded(
    default: Any,
    *,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    lt: Optional[float] = None,
) -> Any:
    """A dataclass field with a default and a checked range (see the module docstring)."""
    return field(default=default, metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)})


def field_ranges(config_cls: type) -> dict[str, Range]:
    """{field name: Range} of a config dataclass (fields without a declared range are left out)."""
    if not dataclasses.is_dataclass(config_cls):
        return {}
    return {f.name: f.metadata[RANGE] for f in dataclasses.fields(config_cls) if RANGE in f.metadata}


def check_ranges(node: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first value of a typed config (or its sub-configs) outside its range."""
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                check_ranges(item, f"{prefix}{index}.")
        return
    if not isinstance(node, DictConfig):
        return
    ranges = field_ranges(OmegaConf.get_type(node))
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            check_ranges(child, f"{prefix}{key}.")
            continue
        if key in ranges and not OmegaConf.is_missing(node, key):
            value = node[key]
            problem = ranges[key].problem(value)
            if problem is not None:
                raise ConfigError(f"{prefix}{key}={value} {problem}")
