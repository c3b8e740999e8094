"""T64-style deep character transformer (Al-Rfou et al. 2019) with its auxiliary prediction losses.

A causal transformer over fixed windows. Besides the main output (the final layer's next-character logits
at every position, the "multiple positions" loss the criterion computes), it returns the named auxiliary terms
of its heads (toolkit.modules.aux_heads): ``layer_{l}_nll`` from a head after layer l (l = 1..n-1) and
``target_{k}_nll`` for the character k ahead (k = 2..m), each a mean NLL per predicted character.

The model never weights them: schedules in the config do (toolkit.aux_weights). Only the terms in
``active_aux`` (non-zero weight at this step) are computed, so a switched-off loss costs nothing and sends no
gradient into its head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.models.init_schemes import DEFAULT_SCHEME, InitTargets, apply_init, check_scheme
from toolkit.modules.attention import Context, attention_factory
from toolkit.modules.attention.terms import (
    attention_after_update,
    attention_metrics,
    attention_term_names,
    attention_terms,
)
from toolkit.modules.aux_heads import AuxHeads, IntermediateHeads
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import Activation, TransformerLayer
from toolkit.registry import MODELS


class CharPositions(StrEnum):
    """Where learned positions are added."""

    every_layer = "every_layer"  # at the input of every layer (T64)
    first_layer = "first_layer"  # at the input of the first layer only


@dataclass
class CharTransformerConfig(MemoryConfigMixin):
    name: str = "char_transformer"
    n_layers: int = 12  # number of Transformer layers (n)
    d_model: int = 512  # model width
    n_heads: int = 8  # attention heads
    d_ff: int = 2048  # feed-forward hidden size
    dropout: float = 0.55  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: Activation = Activation.relu  # relu or gelu
    attention: Any = "standard"  # a registered attention (docs/architecture.md): a name (standard, mae,
    #                              adaptive_span) or {name: NAME, option: value, ...}
    max_positions: int = 512  # rows of each learned position table (>= the window length)
    positions: CharPositions = CharPositions.every_layer  # learned positions added at every layer or the first only
    intermediate_heads: IntermediateHeads = IntermediateHeads.separate  # heads after layers 1..n-1 (IntermediateHeads)
    n_targets: int = 2  # m: predict the characters 1..m ahead (1 = next character only, no target_k terms)
    tie_embeddings: bool = False  # share the input embedding and the final output projection
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    init: str = DEFAULT_SCHEME  # parameter initialisation: 'gpt2' (fast-learning) or 'fairseq' (docs/init.md)
    scale_embedding: bool = True  # multiply the token embedding by sqrt(d_model) (fairseq); false learns
    #                               faster (the positions keep up with the tokens; docs/init.md)


@MODELS.register("char_transformer", CharTransformerConfig)
class CharTransformer(ToolkitModel):
    """Embedding -> n causal pre-LN layers (positions added before each) -> LayerNorm -> next-char logits."""

    def __init__(self, cfg: CharTransformerConfig, vocab_size: int):
        super().__init__()
        if cfg.n_targets < 1:
            raise ConfigError(f"model.n_targets must be >= 1, got {cfg.n_targets}")
        check_scheme(cfg.init)
        self.cfg, self.vocab_size = cfg, vocab_size
        d, n = cfg.d_model, cfg.n_layers
        self.embed = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.embed.weight, mean=0.0, std=d**-0.5)
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        n_tables = n if cfg.positions == "every_layer" else 1
        self.positions = nn.Parameter(torch.randn(n_tables, cfg.max_positions, d) * d**-0.5)
        self.dropout = nn.Dropout(cfg.dropout)
        attention = attention_factory(
            cfg.attention, Context.causal, "model.attention", max_len=cfg.max_positions, n_heads=cfg.n_heads
        )
        self.layers = nn.ModuleList(
            TransformerLayer(
                d,
                cfg.n_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                pre_ln=True,  # pre-LN: the residual stream of every layer can feed a prediction head
                activation=cfg.activation,
                self_attention_cls=attention,
            )
            for _ in range(n)
        )
        self.final_norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight
        # the heads of the auxiliary terms (registered after the output layer: parameter order as before)
        self.aux_heads = AuxHeads(d, vocab_size, n, cfg.intermediate_heads, cfg.n_targets)
        self._register_load_state_dict_pre_hook(nest_aux_head_keys)
        apply_init(self, cfg.init, InitTargets([(self.embed, self.embed_scale)], [self.positions]))
        self.attention_has_terms = bool(attention_term_names(self))  # e.g. a learned span's span_l1

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "CharTransformer":
        return cls(cfg, cfg.vocab_size or task.vocab_size)

    def aux_term_names(self) -> List[str]:
        """Every auxiliary term this model can return (the criterion says which are active): the heads' and the
        attention's (e.g. span_l1 of a learned span)."""
        return self.aux_heads.term_names() + attention_term_names(self)

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (none for shared intermediate heads and the attention's terms)."""
        return self.aux_heads.term_parameters(name) if name in self.aux_heads.term_names() else []

    def forward(
        self, tokens: Tensor, target: Optional[Tensor] = None, active_aux: Optional[set[str]] = None
    ) -> tuple[Tensor, Dict[str, Tensor]]:
        """Final-layer logits (B, T, V) and the active auxiliary terms (none without `target`).

        `active_aux` None means every term (when `target` is given).
        """
        t = tokens.size(1)
        if t > self.cfg.max_positions:
            raise ConfigError(f"input of {t} characters is longer than model.max_positions={self.cfg.max_positions}")
        layer_ids = self.aux_heads.tapped_layers(active_aux)
        keep = set(layer_ids)
        x = self.dropout(self.embed(tokens) * self.embed_scale)
        layer_logits: List[Tensor] = []  # logits of the active intermediate heads, computed as we go
        for i, layer in enumerate(self.layers):
            if i < self.positions.size(0):
                x = x + self.positions[i, :t]
            x = layer(x, causal=True)
            if target is not None and i + 1 in keep:
                layer_logits.append(self.aux_heads.layer_logits(x, i + 1, self._shared_head))
        hidden = self.final_norm(x)
        logits = self.output(hidden)
        # the attention's terms are a by-product of the forward, always returned
        attention_aux = attention_terms(self) if self.attention_has_terms else {}
        if target is None:
            return logits, attention_aux
        return logits, {**self.aux_heads.terms(layer_ids, layer_logits, hidden, target, active_aux), **attention_aux}

    def _shared_head(self, x: Tensor) -> Tensor:
        """The final LayerNorm and output projection (shared intermediate heads use them)."""
        return self.output(self.final_norm(x))

    def after_update(self) -> None:
        """Attention upkeep after an optimizer step (e.g. learned spans back into range)."""
        super().after_update()
        if self.attention_has_terms:
            attention_after_update(self)

    def metrics(self) -> Dict[str, float]:
        """The attention's log metrics (e.g. learned spans: mean, max, largest window), and the base's."""
        return {**(attention_metrics(self) if self.attention_has_terms else {}), **super().metrics()}

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameters of the auxiliary heads (dropped at inference) and of the position tables."""
        return {"aux_head_parameters": self.aux_heads.parameter_count(), "position_parameters": self.positions.numel()}


def nest_aux_head_keys(state_dict: Dict[str, Tensor], prefix: str, *_: object) -> None:
    """load_state_dict pre-hook: a checkpoint's `layer_heads.*` / `target_heads.*` (the heads were the
    model's own attributes before they became the `aux_heads` module) load as `aux_heads.*`."""
    for key in [k for k in state_dict if k.startswith((f"{prefix}layer_heads.", f"{prefix}target_heads."))]:
        state_dict[f"{prefix}aux_heads.{key[len(prefix) :]}"] = state_dict.pop(key)


def with_nested_aux_heads(model: nn.Module, weights: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A copy of the state dict `weights` with the heads' keys as `model` holds them (what load_state_dict
    does through the pre-hook), for the checks that compare a checkpoint's keys with the model's."""
    out = dict(weights)
    for name, module in model.named_modules():
        if isinstance(module, CharTransformer):
            nest_aux_head_keys(out, f"{name}." if name else "")
    return out
