"""Adaptive input and adaptive softmax (Baevski & Auli 2019) as options of any LM model's config.

A model config inherits `AdaptiveIOConfig`; the model builds its input with `build_input_embedding` and, with
`adaptive_softmax`, its output with `build_adaptive_softmax` and mixes in `AdaptiveSoftmaxOutput`: its
`forward` then returns hidden states, and the criterion and the evaluations score them through
`output_nll` (exact: the factorised softmax sums to 1 over the whole vocabulary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.adaptive_input import AdaptiveInput, AdaptiveInputConfig
from toolkit.modules.adaptive_softmax import AdaptiveSoftmax, AdaptiveSoftmaxConfig


@dataclass
class AdaptiveIOConfig:
    """Word-level input/output options shared by the LM models."""

    adaptive_input: bool = False
    """Frequency-banded input embeddings (scaled by sqrt(d_model) inside)."""
    adaptive_softmax: bool = False
    """Exact factorised softmax over frequency bands; the model's forward then returns hidden states."""
    adaptive_cutoffs: List[int] = field(default_factory=lambda: [20000, 60000])
    """Band boundaries (ids sorted by frequency), shared by adaptive input and softmax; >= vocab are dropped."""
    adaptive_factor: float = 4.0
    """Band i has dimension d_model / factor**i."""
    adaptive_softmax_dropout: float = 0.0
    """Dropout inside the tail bands of the adaptive softmax."""
    tie_adaptive_weights: bool = False
    """Adaptive softmax word weights = adaptive input tables."""
    tie_adaptive_proj: bool = False
    """Adaptive softmax tail projections = adaptive input projections."""


def check_adaptive_config(cfg: Any, tie_embeddings: bool) -> None:
    """Combinations that cannot be built, as one-line ConfigErrors (`tie_embeddings`: the model ties a plain
    output layer to its input embedding)."""
    if (cfg.tie_adaptive_weights or cfg.tie_adaptive_proj) and not (cfg.adaptive_input and cfg.adaptive_softmax):
        raise ConfigError(
            "model.tie_adaptive_weights/tie_adaptive_proj need model.adaptive_input=true and model.adaptive_softmax=true"
        )
    if cfg.adaptive_input and not cfg.adaptive_softmax and tie_embeddings:
        raise ConfigError(
            "model.tie_embeddings=true cannot tie a plain output layer to adaptive input embeddings: set "
            "model.adaptive_softmax=true (with tie_adaptive_weights) or model.tie_embeddings=false"
        )


def build_input_embedding(
    cfg: Any, vocab_size: int, dim: int, padding_idx: Optional[int], init_std: Optional[float]
) -> tuple[nn.Module, float]:
    """(embedding module, the scale the model multiplies its output by). Adaptive input scales itself;
    a plain table is initialised N(0, init_std) (None: PyTorch's N(0, 1)) and scaled by sqrt(dim) when
    init_std is given (fairseq's convention)."""
    if cfg.adaptive_input:
        band_cfg = AdaptiveInputConfig(list(cfg.adaptive_cutoffs), cfg.adaptive_factor, scale=True)
        return AdaptiveInput(vocab_size, dim, band_cfg, padding_idx), 1.0
    embed = nn.Embedding(vocab_size, dim)
    if init_std is None:
        return embed, 1.0
    nn.init.normal_(embed.weight, mean=0.0, std=init_std)
    return embed, math.sqrt(dim)


def build_adaptive_softmax(cfg: Any, vocab_size: int, dim: int, embed: nn.Module) -> AdaptiveSoftmax:
    """The adaptive softmax of a config, tied to `embed` when that is an AdaptiveInput and the config asks."""
    softmax_cfg = AdaptiveSoftmaxConfig(
        cutoffs=list(cfg.adaptive_cutoffs),
        factor=cfg.adaptive_factor,
        dropout=cfg.adaptive_softmax_dropout,
        tie=cfg.tie_adaptive_weights,
        tie_proj=cfg.tie_adaptive_proj,
    )
    return AdaptiveSoftmax(vocab_size, dim, softmax_cfg, embed if isinstance(embed, AdaptiveInput) else None)


class AdaptiveSoftmaxOutput:
    """Mixin for a model whose `self.output` is an AdaptiveSoftmax and `forward` returns hidden states.

    The criterion sees `scores_own_output` and uses `output_nll` instead of a softmax over logits; evaluation
    does the same.
    """

    output: AdaptiveSoftmax
    padding_idx: Optional[int]
    scores_own_output = True  # ToolkitModel's flag: forward returns hidden states, output_nll scores them

    def output_nll(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-token NLL (float32, shape of target) of `forward`'s output; padding targets count 0."""
        nll = self.output.nll(output, target)
        if self.padding_idx is not None:
            nll = nll.masked_fill(target == self.padding_idx, 0.0)
        return nll

    def output_log_prob(self, output: Tensor) -> Tensor:
        """Log-probabilities (..., V) over the whole vocabulary (exactly normalised)."""
        return self.output.log_prob(output)
