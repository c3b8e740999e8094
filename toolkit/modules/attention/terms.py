"""What an attention variant adds to its model: auxiliary terms (e.g. a learned span's cost), upkeep after each
optimizer step (e.g. clamping spans) and log metrics, without the model knowing the variant.

A module that has any mixes in `AttentionTerms` and overrides what it needs; a model calls the functions
below over its modules (`attention_term_names` once at construction: when it is empty the model skips the
rest, so plain attention costs nothing).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn


class AttentionTerms:
    """Mixin of attention modules with auxiliary terms or upkeep; the defaults do nothing."""

    def aux_term_names(self) -> List[str]:
        """The auxiliary terms this module's forward produces (summed over the model's modules by name)."""
        return []

    def aux_terms(self) -> Dict[str, Tensor]:
        """The terms of this module's last forward."""
        return {}

    def after_update(self) -> None:
        """Called after every optimizer step."""

    @classmethod
    def summary_metrics(cls, modules: Sequence["AttentionTerms"]) -> Dict[str, float]:
        """Log metrics of all the model's modules of this class together (e.g. mean and largest span)."""
        return {}


def _modules(model: nn.Module) -> List[AttentionTerms]:
    return [m for m in model.modules() if isinstance(m, AttentionTerms)]


def attention_term_names(model: nn.Module) -> List[str]:
    """Every auxiliary term the attention modules of `model` can return, in first-seen order."""
    return list(dict.fromkeys(name for m in _modules(model) for name in m.aux_term_names()))


def attention_terms(model: nn.Module) -> Dict[str, Tensor]:
    """The attention modules' terms of the last forward, summed by name over modules (e.g. layers)."""
    grouped: Dict[str, List[Tensor]] = {}
    for module in _modules(model):
        for name, value in module.aux_terms().items():
            grouped.setdefault(name, []).append(value)
    return {name: torch.stack(values).sum() for name, values in grouped.items()}


@torch.no_grad()
def attention_after_update(model: nn.Module) -> None:
    for module in _modules(model):
        module.after_update()


@torch.no_grad()
def attention_metrics(model: nn.Module) -> Dict[str, float]:
    """Each module class's summary over its modules in `model`."""
    by_class: Dict[type, List[AttentionTerms]] = {}
    for module in _modules(model):
        by_class.setdefault(type(module), []).append(module)
    out: Dict[str, float] = {}
    for cls, modules in by_class.items():
        out.update(cls.summary_metrics(modules))
    return out
