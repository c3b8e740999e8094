"""Weighting of a model's named auxiliary terms by their step-indexed schedules (toolkit.aux_weights)."""

from __future__ import annotations

import logging
from typing import Dict

from torch import Tensor

from toolkit.aux_weights import AuxWeights

log = logging.getLogger(__name__)


def weighted_aux(
    aux: Dict[str, Tensor], weights: AuxWeights | None, step: int
) -> tuple[Tensor | float, Dict[str, float]]:
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
