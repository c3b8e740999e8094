"""Decoder-only causal Transformer language model (GPT-style), for characters or words.

Word-level options (Baevski & Auli 2019): `adaptive_input` replaces the embedding table by frequency bands
(toolkit.modules.adaptive_input) and `adaptive_softmax` replaces the output layer by the exact factorised
softmax over the same bands (toolkit.modules.adaptive_softmax), optionally tied to the input. With the
adaptive softmax the model's `forward` returns the final hidden states instead of logits, and the model
provides `output_nll(output, target)` (per-token NLL; the criterion and the evaluation use it) and
`output_log_prob(output)` (the full distribution). Without it, everything is as for the plain LM.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.adaptive_input import AdaptiveInput, AdaptiveInputConfig
from toolkit.modules.adaptive_softmax import AdaptiveSoftmax, AdaptiveSoftmaxConfig
from toolkit.modules.attention import MultiheadAttention
from toolkit.modules.mae_attention import MAEAttention, MAEConfig, validate_mae_config
from toolkit.modules.positional import build_positions
from toolkit.modules.transformer_layer import TransformerLayer
from toolkit.registry import MODELS


def self_attention_class(cfg: Any) -> Callable[..., nn.Module]:
    """The attention module of every layer: plain multi-head attention or MAE."""
    if cfg.attention == "standard":
        return MultiheadAttention
    if cfg.attention == "mae":
        validate_mae_config(cfg.mae, cfg.n_heads)
        return functools.partial(MAEAttention, cfg=cfg.mae)
    raise ConfigError(f"model.attention: '{cfg.attention}' (valid: standard, mae)")


@dataclass
class TransformerLMConfig:
    name: str = "transformer_lm"
    n_layers: int = 2  # number of Transformer layers
    d_model: int = 256  # model width
    n_heads: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward hidden size
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: str = "relu"  # 'relu' or 'gelu'
    pre_ln: bool = True  # LayerNorm before each sublayer (True) or after (False, Vaswani et al.)
    final_norm: bool = True  # with pre_ln: a LayerNorm after the last layer (fairseq's wiki103 model has none)
    attention: str = "standard"  # 'standard' or 'mae' (mixture of attentive experts, causal prefix-mean gate)
    mae: MAEConfig = field(default_factory=MAEConfig)  # used when attention='mae' 
    positions: str = "learned"  # 'learned' or 'sinusoidal'
    max_positions: int = 1024  # longest input the position table covers
    tie_embeddings: bool = True  # share the plain input embedding and the plain output projection
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    adaptive_input: bool = False  # frequency-banded input embeddings (scaled by sqrt(d_model) inside)
    adaptive_softmax: bool = False  # exact factorised softmax over frequency bands; forward returns hidden states
    adaptive_cutoffs: List[int] = field(default_factory=lambda: [20000, 60000])  # band boundaries (ids sorted
    #                                 by frequency), shared by adaptive input and softmax; >= vocab are dropped
    adaptive_factor: float = 4.0  # band i has dimension d_model / factor**i
    adaptive_softmax_dropout: float = 0.0  # dropout inside the tail bands of the adaptive softmax
    tie_adaptive_weights: bool = False  # adaptive softmax word weights = adaptive input tables
    tie_adaptive_proj: bool = False  # adaptive softmax tail projections = adaptive input projections


def check_config(cfg: Any) -> None:
    """Combinations that cannot be built, as one-line ConfigErrors."""
    if (cfg.tie_adaptive_weights or cfg.tie_adaptive_proj) and not (cfg.adaptive_input and cfg.adaptive_softmax):
        raise ConfigError(
            "model.tie_adaptive_weights/tie_adaptive_proj need model.adaptive_input=true and model.adaptive_softmax=true"
        )
    if cfg.adaptive_input and not cfg.adaptive_softmax and cfg.tie_embeddings:
        raise ConfigError(
            "model.tie_embeddings=true cannot tie a plain output layer to adaptive input embeddings: set "
            "model.adaptive_softmax=true (with tie_adaptive_weights) or model.tie_embeddings=false"
        )


@MODELS.register("transformer_lm", TransformerLMConfig)
class TransformerLM(nn.Module):
    """Token embedding + positions -> causal layers -> (final LayerNorm) -> vocabulary logits.

    Build it with `TransformerLM.create` (or `build`): with `adaptive_softmax` that returns an
    `AdaptiveSoftmaxLM`, the subclass that scores its hidden-state output itself.
    """

    def __init__(self, cfg: TransformerLMConfig, vocab_size: int, padding_idx: Optional[int] = None):
        super().__init__()
        check_config(cfg)
        if cfg.adaptive_softmax and not isinstance(self, AdaptiveSoftmaxLM):
            raise TypeError("model.adaptive_softmax=true: build with TransformerLM.create(cfg, vocab_size)")
        self.cfg, self.vocab_size, self.padding_idx = cfg, vocab_size, padding_idx
        if cfg.adaptive_input:
            band_cfg = AdaptiveInputConfig(list(cfg.adaptive_cutoffs), cfg.adaptive_factor, scale=True)
            self.embed: nn.Module = AdaptiveInput(vocab_size, cfg.d_model, band_cfg, padding_idx)
            self.embed_scale = 1.0  # AdaptiveInput already multiplies by sqrt(d_model)
        else:
            self.embed = nn.Embedding(vocab_size, cfg.d_model)
            nn.init.normal_(self.embed.weight, mean=0.0, std=cfg.d_model**-0.5)
            self.embed_scale = math.sqrt(cfg.d_model)
        self.positions = build_positions(cfg.positions, cfg.max_positions, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                pre_ln=cfg.pre_ln,
                activation=cfg.activation,
                self_attention_cls=self_attention_class(cfg),
            )
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_ln and cfg.final_norm else nn.Identity()
        self.output: nn.Module = self._build_output(cfg, vocab_size)

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        output = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            output.weight = self.embed.weight
        return output

    @classmethod
    def create(cls, cfg: Any, vocab_size: int, padding_idx: Optional[int] = None) -> "TransformerLM":
        """The model for a config: an AdaptiveSoftmaxLM when cfg.adaptive_softmax, else a TransformerLM."""
        model_cls = AdaptiveSoftmaxLM if cfg.adaptive_softmax else TransformerLM
        return model_cls(cfg, vocab_size, padding_idx)

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "TransformerLM":
        # the padding id matters only to the adaptive layers (a zero, frozen embedding row; pad targets ignored)
        padding_idx = getattr(task, "pad_idx", None) if (cfg.adaptive_input or cfg.adaptive_softmax) else None
        return cls.create(cfg, cfg.vocab_size or task.vocab_size, padding_idx)

    def hidden(self, tokens: Tensor) -> Tensor:
        """Final-layer states (B, T, D) for tokens (B, T)."""
        positions = torch.arange(tokens.size(1), device=tokens.device)
        embedded = self.embed(tokens)
        if self.embed_scale != 1.0:
            embedded = embedded * self.embed_scale
        x = self.dropout(embedded + self.positions(positions))
        for layer in self.layers:
            x = layer(x, causal=True)
        return self.final_norm(x)

    def forward(self, tokens: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Dict[str, Tensor]]:
        """Logits (B, T, V) and named auxiliary terms (none for this model)."""
        return self.output(self.hidden(tokens)), {}

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameters of the input embedding, the layers and what the output layer adds (tied ones counted once)."""
        embed = {id(p) for p in self.embed.parameters()}
        layer_params = {id(p): p.numel() for p in self.layers.parameters()}
        output_extra = sum(p.numel() for p in self.output.parameters() if id(p) not in embed)
        return {
            "embedding_parameters": sum(p.numel() for p in self.embed.parameters()),
            "layer_parameters": sum(layer_params.values()),
            "output_parameters_untied": output_extra,
        }


class AdaptiveSoftmaxLM(TransformerLM):
    """TransformerLM with an adaptive softmax output: `forward` returns the final hidden states (B, T, D).

    The criterion finds `output_nll` and uses it instead of a softmax over logits; evaluation does the same.
    """

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        softmax_cfg = AdaptiveSoftmaxConfig(
            cutoffs=list(cfg.adaptive_cutoffs),
            factor=cfg.adaptive_factor,
            dropout=cfg.adaptive_softmax_dropout,
            tie=cfg.tie_adaptive_weights,
            tie_proj=cfg.tie_adaptive_proj,
        )
        tied = self.embed if isinstance(self.embed, AdaptiveInput) else None
        return AdaptiveSoftmax(vocab_size, cfg.d_model, softmax_cfg, tied)

    def forward(self, tokens: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Dict[str, Tensor]]:
        """Final hidden states (B, T, D) and named auxiliary terms (none)."""
        return self.hidden(tokens), {}

    def output_nll(self, output: Tensor, target: Tensor) -> Tensor:
        """Per-token NLL (float32, shape of target) of `forward`'s output; padding targets count 0."""
        nll = self.output.nll(output, target)
        if self.padding_idx is not None:
            nll = nll.masked_fill(target == self.padding_idx, 0.0)
        return nll

    def output_log_prob(self, output: Tensor) -> Tensor:
        """Log-probabilities (..., V) over the whole vocabulary (exactly normalised)."""
        return self.output.log_prob(output)
