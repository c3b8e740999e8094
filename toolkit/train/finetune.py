"""Fine-tuning: start from a pretrained checkpoint's weights and choose which parameters train."""

from __future__ import annotations

import logging
import re
from typing import Dict, Optional

import torch
from torch import nn

from toolkit.errors import ConfigError
from toolkit.models.saved_names import with_current_names
from toolkit.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def init_from_checkpoint(model: nn.Module, path: str, min_fraction: float = 0.5) -> None:
    """Load the model weights of `path`; parameters it lacks (e.g. new gates) keep their initialisation.

    Refused (ConfigError, see `init_weights`) before any weight changes."""
    state = init_weights(model, path, min_fraction)
    missing, unexpected = model.load_state_dict(state, strict=False)
    log.info(
        "initialised from %s (%d tensors; new, not in the checkpoint: %s; ignored: %s)",
        path,
        len(state) - len(unexpected),
        ", ".join(missing) or "none",
        ", ".join(unexpected) or "none",
    )


def init_weights(model: nn.Module, path: str, min_fraction: float) -> Dict[str, torch.Tensor]:
    """The model weights of `path`, checked against `model` (which may live on the meta device).

    Refused (ConfigError) when a shared name has another shape, or when the checkpoint covers less than
    `min_fraction` (config init_from_min_fraction) of the model's parameter values: a checkpoint of another
    model or task would otherwise "initialise" almost nothing and the run would silently train from scratch."""
    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise ConfigError(f"init_from={path}: not a tk-train checkpoint (no model weights inside)")
    state = with_current_names(model, state)  # older checkpoints' keys, as load_state_dict reads them
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise ConfigError(
            f"init_from={path}: parameter '{k}' has shape {tuple(state[k].shape)}, the model's is {tuple(own[k].shape)}"
        )
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    covered = sum(p.numel() for name, p in params.items() if name in state)
    if covered < min_fraction * total:
        raise ConfigError(
            f"init_from={path}: the checkpoint holds {covered:,} of the model's {total:,} parameter "
            f"values ({covered / max(total, 1):.0%}; at least {min_fraction:.0%} needed): a checkpoint of another "
            f"model or task (init_from_min_fraction={min_fraction:g})"
        )
    return state


def freeze_all_but(model: nn.Module, pattern: Optional[str]) -> None:
    """requires_grad=False for every parameter whose name does not match `pattern` (re.search)."""
    if not pattern:
        return
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"train_only: bad regex '{pattern}': {error}") from None
    trained = 0
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        trained += param.requires_grad
    if not trained:
        raise ConfigError(f"train_only='{pattern}' matches no parameter of the model")
    log.info("train_only=%s: %d parameter tensors train, the rest are frozen", pattern, trained)
