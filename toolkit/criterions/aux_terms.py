"""Weighting of a model's named auxiliary terms by step-indexed schedules (DESIGN.md, Contracts)."""

from __future__ import annotations

import logging
from typing import Dict, Iterable

from torch import Tensor

from toolkit.train.schedules import AuxWeights

log = logging.getLogger(__name__)


def weighted_aux(aux: Dict[str, Tensor], weights: AuxWeights | None, step: int) -> tuple[Tensor | float, Dict[str, float]]:
    """Sum of weight * term over the model's auxiliary terms, plus what to log (each term and its weight).

    A term with weight 0 is left out of the sum entirely, so it contributes no gradient. A term that no
    schedule names gets weight 0 and one warning.
    """
    total: Tensor | float = 0.0
    logs: Dict[str, float] = {}
    for name, value in aux.items():
        weight = weights.weight(name, step) if weights is not None else None
        if weight is None:
            if name not in _warned:
                log.warning("auxiliary term '%s' has no schedule in aux_weights: weight 0", name)
                _warned.add(name)
            weight = 0.0
        logs[f"aux/{name}"] = float(value.detach())
        logs[f"weight/{name}"] = weight
        if weight != 0.0:
            total = total + weight * value
    return total, logs


_warned: set[str] = set()


def active_aux_terms(names: Iterable[str], weights: AuxWeights | None, step: int) -> set[str]:
    """The auxiliary terms whose weight at `step` is non-zero (models may skip computing the others)."""
    if weights is None:
        return set()
    return {name for name in names if (weights.weight(name, step) or 0.0) != 0.0}
