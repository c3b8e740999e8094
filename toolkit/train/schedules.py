"""Block-coordinate-descent phases: which parameter groups train, a pure function of the step or epoch.

No phase keeps state: the groups at step s are computed from (s, config), so resuming needs nothing saved.
"""

from __future__ import annotations

from typing import Any

from toolkit.errors import ConfigError


def active_groups(phases: Any, step: int, epoch: int, all_groups: list[str]) -> list[str]:
    """Which parameter groups train at this point of a block-coordinate-descent cycle.

    `phases.cycle` is a list of {groups, length}; the position in the cycle is `step` (unit=update) or
    `epoch` (unit=epoch, 1-based epochs) modulo the cycle length.
    """
    cycle = list(phases.cycle)
    if not cycle:
        return list(all_groups)
    total = sum(int(p.length) for p in cycle)
    position = (step if phases.unit == "update" else epoch - 1) % total
    for phase in cycle:
        if position < phase.length:
            return list(phase.groups)
        position -= phase.length
    raise AssertionError("unreachable")


def validate_phases(phases: Any, all_groups: list[str]) -> None:
    for i, phase in enumerate(phases.cycle):
        if phase.length <= 0:
            raise ConfigError(f"phases.cycle.{i}.length must be positive, got {phase.length}")
        for group in phase.groups:
            if group not in all_groups:
                raise ConfigError(
                    f"phases.cycle.{i}.groups: unknown parameter group '{group}' (valid: {', '.join(all_groups)})"
                )
