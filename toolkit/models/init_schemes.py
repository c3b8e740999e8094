"""Parameter initialisation as a named choice of every model (`model.init`), implemented once here.

- ``gpt2`` (the default of the decoder-only LMs with learned positions, transformer_lm and char_transformer):
  every weight matrix N(0, 0.02), biases 0, LayerNorms 1/0; the residual output
  projections (attention output, FFN second layer) N(0, 0.02 / sqrt(R)) with R the number of residual
  branches (2 per decoder-only layer, as GPT-2's 2 x layers); token embeddings such that the vector the
  first layer sees is N(0, 0.02) (the table is divided by the model's fixed input scale, so a model that
  multiplies its embeddings by sqrt(d) keeps doing so and its outputs for given weights do not depend on
  the scheme); learned positions N(0, 0.02), the same size as the tokens. A fresh LM then predicts a near
  uniform distribution (first loss ~ ln V) and attention can tell positions apart from the first update.
- ``fairseq`` (the default of the streamed LM and the encoder-decoder model, whose positions do not drown
  under the tokens): the model's constructor as the paper's reference code initialises it (fairseq: embeddings
  N(0, d^-1/2) used times sqrt(d), Xavier attention projections, PyTorch's default Linear init elsewhere;
  the streamed LM: the adaptive-span reference's PyTorch defaults). Nothing is re-initialised.

Modules with an initialisation of their own that is part of their method keep it under every scheme:
product-key memories, persistent memory vectors, relative position keys, span parameters and predictors,
adaptive input/softmax bands, and MAE gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.stacked_linear import weight_blocks

SCHEMES = ("gpt2", "fairseq")
DEFAULT_SCHEME = "gpt2"
GPT2_STD = 0.02


@dataclass
class InitTargets:
    """What a model tells the scheme about itself: its token embeddings (module, the fixed scale the
    model multiplies them by; an embedding's padding row stays zero) and its learned position tables."""

    embeddings: Sequence[Tuple[nn.Module, float]] = ()
    positions: Sequence[Tensor] = ()


def check_scheme(name: str) -> None:
    """ConfigError naming model.init and the valid schemes."""
    if name not in SCHEMES:
        raise ConfigError(f"model.init: unknown scheme '{name}' (valid: {', '.join(SCHEMES)})")


def _own_init_modules() -> tuple:
    """Module types whose initialisation belongs to their method (left alone by every scheme)."""
    from toolkit.modules.adaptive_input import AdaptiveInput
    from toolkit.modules.adaptive_softmax import AdaptiveSoftmax
    from toolkit.modules.attention.adaptive_span import AdaptiveMask, DynamicSpanMask
    from toolkit.modules.attention.mae_gate import MAEGate
    from toolkit.modules.attention.relative import PersistentMemory
    from toolkit.modules.pkm import ProductKeyMemory

    return (AdaptiveInput, AdaptiveSoftmax, AdaptiveMask, DynamicSpanMask, MAEGate, ProductKeyMemory, PersistentMemory)


def residual_projections(model: nn.Module) -> List[nn.Linear]:
    """The linear layers whose output is added to a residual stream: attention and FFN outputs."""
    from toolkit.modules.attention.base import MultiheadAttention
    from toolkit.modules.attention.relative import RelativeAttention
    from toolkit.modules.transformer_layer import FeedForward

    found: List[nn.Linear] = []
    for module in model.modules():
        if isinstance(module, (MultiheadAttention, RelativeAttention)):
            found.append(module.out_proj)
        elif isinstance(module, FeedForward):
            found.append(module.fc2)
    return found


def _linears_outside_own_init(model: nn.Module) -> List[nn.Linear]:
    own = _own_init_modules()
    skipped = {id(m) for top in model.modules() if isinstance(top, own) for m in top.modules()}
    return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in skipped]


def init_gpt2(model: nn.Module, targets: InitTargets) -> None:
    """GPT-2's scheme (module docstring), in place. Tied weights are set once, by their embedding."""
    embedding_weights = {id(module.weight) for module, _ in targets.embeddings if isinstance(module, nn.Embedding)}
    residual = residual_projections(model)
    residual_std = GPT2_STD / math.sqrt(max(len(residual), 1))
    residual_ids = {id(m) for m in residual}
    for linear in _linears_outside_own_init(model):
        if id(linear.weight) not in embedding_weights:  # a tied output layer is the embedding's table
            std = residual_std if id(linear) in residual_ids else GPT2_STD
            for weight in weight_blocks(linear):  # stacked projections: block by block, as separate layers
                nn.init.normal_(weight, mean=0.0, std=std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module, scale in targets.embeddings:
        if not isinstance(module, nn.Embedding):  # adaptive input: its own scheme
            continue
        nn.init.normal_(module.weight, mean=0.0, std=GPT2_STD / scale)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    for table in targets.positions:
        nn.init.normal_(table, mean=0.0, std=GPT2_STD)


def apply_init(model: nn.Module, scheme: str, targets: InitTargets) -> None:
    """Initialise `model` (freshly built by its constructor) with the named scheme."""
    check_scheme(scheme)
    if scheme == "gpt2":
        init_gpt2(model, targets)
