"""A checkpoint's state_dict keys as today's models name them.

load_state_dict renames older checkpoints' keys through the models' pre-hooks; the checks that compare a
checkpoint's keys with the model's before loading anything (resume, tk-eval, init_from) rename them the same
way here.
"""

from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

from toolkit.models.streaming_lm import with_streamed_layer_names
from toolkit.modules.attention.base import with_stacked_projections
from toolkit.modules.aux_heads import with_nested_aux_heads


def with_current_names(model: nn.Module, weights: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A copy of the state dict `weights` keyed as `model` names its tensors."""
    weights = with_stacked_projections(model, weights)  # separate q/k/v projections of older checkpoints
    weights = with_nested_aux_heads(model, weights)  # the T64 heads saved before they were one module
    return with_streamed_layer_names(model, weights)  # streaming_lm's layers before the decoder LM was one
