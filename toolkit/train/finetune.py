"""Fine-tuning: start from a pretrained checkpoint's weights and choose which parameters train."""

from __future__ import annotations

import logging
import re
from typing import Optional

from torch import nn

from toolkit.errors import ConfigError
from toolkit.train.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def init_from_checkpoint(model: nn.Module, path: str) -> None:
    """Load the model weights of `path`; parameters it lacks (e.g. new gates) keep their initialisation."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise ConfigError(f"init_from={path}: parameter '{k}' has shape {tuple(state[k].shape)}, "
                          f"the model's is {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    log.info("initialised from %s (%d tensors; new, not in the checkpoint: %s; ignored: %s)", path,
             len(state) - len(unexpected), ", ".join(missing) or "none", ", ".join(unexpected) or "none")


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
