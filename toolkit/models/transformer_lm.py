"""Decoder-only causal Transformer language model (GPT-style), for characters or words.

Word-level options (Baevski & Auli 2019): `adaptive_input` replaces the embedding table by frequency bands
(toolkit.modules.adaptive_input) and `adaptive_softmax` replaces the output layer by the exact factorised
softmax over the same bands (toolkit.modules.adaptive_softmax), optionally tied to the input. With the
adaptive softmax the model's `forward` returns the final hidden states instead of logits, and the model
provides `output_nll(output, target)` (per-token NLL; the criterion and the evaluation use it) and
`output_log_prob(output)` (the full distribution). Without it, everything is as for the plain LM.

Positions are added either with the token embeddings (`positions_at: input`, dropout over the sum) or, as a
learned table (`positions_at: first_layer`) or one table per layer (`every_layer`, T64), at the layers' inputs
after the embedding dropout. `char_transformer` (T64's character model) is a configuration of this model.

`aux_heads` (off by default) adds T64's auxiliary heads (toolkit.modules.aux_heads): intermediate-layer
losses on the outputs of layers 1..n-1 and multiple targets from the final states, as named auxiliary terms.

The layers' attention is `model.attention`, a registered variant (toolkit.modules.attention): standard, mae, or
adaptive_span (relative attention with a learned span, whose cost is the auxiliary term `span_l1`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.models.adaptive_io import (
    AdaptiveIOConfig,
    AdaptiveSoftmaxOutput,
    build_adaptive_softmax,
    build_input_embedding,
    check_adaptive_config,
)
from toolkit.models.base import ToolkitModel
from toolkit.models.init_schemes import DEFAULT_SCHEME, InitTargets, apply_init, check_scheme
from toolkit.modules.attention import Context, attention_factory
from toolkit.modules.attention.mae import ExpertMixture, MAEConfig
from toolkit.modules.attention.mae_stats import layer_mae_modules, mae_metrics
from toolkit.modules.attention.registry import OptionBlock
from toolkit.modules.attention.terms import (
    attention_after_update,
    attention_metrics,
    attention_term_names,
    attention_terms,
)
from toolkit.modules.aux_heads import AuxHeadsConfig, build_aux_heads, check_aux_heads, nest_aux_head_keys
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.positional import PositionKind, build_positions, layer_position_tables
from toolkit.modules.transformer_layer import Activation, TransformerLayer
from toolkit.registry import MODELS

LayerHead = Callable[[Tensor, int], Tensor]  # (output of a layer, its 1-based number) -> that layer's logits


class PositionsAt(StrEnum):
    """Where the position vectors join the token embeddings."""

    input = "input"  # added to the token embeddings, dropout over the sum
    first_layer = "first_layer"  # a learned table added at the first layer's input, after the embedding dropout
    every_layer = "every_layer"  # a learned table per layer, each added at its layer's input (T64)


def check_positions(cfg: Any) -> None:
    """ConfigError: positions at the layers' inputs are learned tables."""
    if cfg.positions_at != PositionsAt.input and cfg.positions != PositionKind.learned:
        raise ConfigError(
            f"model.positions_at={cfg.positions_at} adds learned tables: set model.positions=learned "
            f"(got {cfg.positions}) or model.positions_at=input"
        )


@dataclass
class TransformerLMConfig(AdaptiveIOConfig, MemoryConfigMixin):
    """Decoder-only Transformer LM; the adaptive input/softmax fields come from AdaptiveIOConfig."""

    name: str = "transformer_lm"
    n_layers: int = 2  # number of Transformer layers
    d_model: int = 256  # model width
    n_heads: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward hidden size
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: Activation = Activation.relu  # relu or gelu
    pre_ln: bool = True  # LayerNorm before each sublayer (True) or after (False, Vaswani et al.)
    final_norm: bool = True  # with pre_ln: a LayerNorm after the last layer (fairseq's wiki103 model has none)
    attention: Any = "standard"  # a registered attention (docs/architecture.md): a name (standard, mae,
    #                              adaptive_span) or {name: NAME, option: value, ...}
    mae: MAEConfig = field(default_factory=MAEConfig)  # MAE's options when attention is mae (a mapping overrides them)
    positions: PositionKind = PositionKind.learned  # learned or sinusoidal
    positions_at: PositionsAt = PositionsAt.input  # input, first_layer or every_layer (learned tables only)
    max_positions: int = 1024  # longest input the position table covers
    tie_embeddings: bool = True  # share the plain input embedding and the plain output projection
    output_bias: bool = False  # a bias in the plain output projection (also when it is tied)
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    init: str = DEFAULT_SCHEME  # parameter initialisation: 'gpt2' (fast-learning) or 'fairseq' (docs/init.md)
    scale_embedding: bool = True  # multiply a plain token embedding by sqrt(d_model) (fairseq); false learns
    #                               faster (the positions keep up with the tokens; docs/init.md)
    # auxiliary heads (T64): intermediate-layer losses, multiple targets; off by default (plain output only)
    aux_heads: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)


@MODELS.register("transformer_lm", TransformerLMConfig)
class TransformerLM(ToolkitModel):
    """Token embedding + positions -> causal layers -> (final LayerNorm) -> vocabulary logits.

    Build it with `TransformerLM.create` (or `build`): with `adaptive_softmax` that returns an
    `AdaptiveSoftmaxLM`, the subclass that scores its hidden-state output itself.
    """

    def __init__(self, cfg: TransformerLMConfig, vocab_size: int, padding_idx: Optional[int] = None):
        super().__init__()
        check_adaptive_config(cfg, cfg.tie_embeddings)
        check_scheme(cfg.init)
        check_aux_heads(cfg.aux_heads, cfg.adaptive_softmax)
        check_positions(cfg)
        if cfg.adaptive_softmax and not isinstance(self, AdaptiveSoftmaxLM):
            raise TypeError("model.adaptive_softmax=true: build with TransformerLM.create(cfg, vocab_size)")
        self.cfg, self.vocab_size, self.padding_idx = cfg, vocab_size, padding_idx
        self.embed, self.embed_scale = build_input_embedding(
            cfg, vocab_size, cfg.d_model, padding_idx, cfg.d_model**-0.5
        )
        if not cfg.scale_embedding and not cfg.adaptive_input:
            self.embed_scale = 1.0
        # at the input: a position module; at the layers' inputs: the tables themselves, (n_tables, max, d)
        self.positions: nn.Module | nn.Parameter
        if cfg.positions_at == PositionsAt.input:
            self.positions = build_positions(cfg.positions, cfg.max_positions, cfg.d_model)
        else:
            n_tables = cfg.n_layers if cfg.positions_at == PositionsAt.every_layer else 1
            self.positions = layer_position_tables(n_tables, cfg.max_positions, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        attention = attention_factory(
            cfg.attention,
            Context.causal,
            "model.attention",
            max_len=cfg.max_positions,
            n_heads=cfg.n_heads,
            blocks=self.attention_blocks(cfg),
        )
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
                self_attention_cls=attention,
            )
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_ln and cfg.final_norm else nn.Identity()
        self.output: nn.Module = self._build_output(cfg, vocab_size)
        self.aux_heads = build_aux_heads(cfg.aux_heads, cfg.d_model, vocab_size, cfg.n_layers)  # None when off
        self._register_load_state_dict_pre_hook(nest_aux_head_keys)
        apply_init(self, cfg.init, InitTargets([(self.embed, self.embed_scale)], self.position_tables()))
        self.attention_has_terms = bool(attention_term_names(self))  # e.g. a learned span's span_l1

    def attention_blocks(self, cfg: Any) -> Dict[str, OptionBlock]:
        """The option blocks of the config that `model.attention` takes defaults from: MAE's, `mae:`."""
        return {"mae": OptionBlock(cfg.mae, "mae")}

    def position_tables(self) -> List[Tensor]:
        """The learned position tables (none for sinusoidal positions)."""
        if isinstance(self.positions, nn.Parameter):
            return [self.positions]
        return [self.positions.weight] if isinstance(self.positions, nn.Embedding) else []

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        output = nn.Linear(cfg.d_model, vocab_size, bias=cfg.output_bias)
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
        return self.layer_states(tokens)[0]

    def layer_states(
        self, tokens: Tensor, tapped: Collection[int] = (), head: Optional[LayerHead] = None
    ) -> Tuple[Tensor, List[Tensor]]:
        """Final-layer states (B, T, D) and, for the layers numbered in `tapped` (1-based), in order, their
        outputs, or `head(output, layer)` computed as soon as the layer has run."""
        t = tokens.size(1)
        if t > self.cfg.max_positions:
            raise ConfigError(f"input of {t} tokens is longer than model.max_positions={self.cfg.max_positions}")
        embedded = self.embed(tokens)
        if self.embed_scale != 1.0:
            embedded = embedded * self.embed_scale
        tables = self.positions if isinstance(self.positions, nn.Parameter) else None  # at the layers' inputs
        if tables is None:
            x = self.dropout(embedded + self.positions(torch.arange(t, device=tokens.device)))
        else:
            x = self.dropout(embedded)
        taps: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            if tables is not None and i < tables.size(0):
                x = x + tables[i, :t]
            x = layer(x, causal=True)
            if i + 1 in tapped:
                taps.append(x if head is None else head(x, i + 1))
        return self.final_norm(x), taps

    def forward(
        self, tokens: Tensor, target: Optional[Tensor] = None, active_aux: Optional[set[str]] = None
    ) -> tuple[Tensor, Dict[str, Tensor]]:
        """Logits (B, T, V) and the auxiliary terms: the active ones of the aux heads (none without heads or
        `target`; `active_aux` None means every term) and the attention's (e.g. span_l1 of a learned span).
        """
        if self.aux_heads is None or target is None:
            return self.output(self.hidden(tokens)), self._attention_aux()
        # T64's order of operations (each head as its layer runs, the output before the k-ahead heads): backward
        # sums gradients in this order, which char_transformer's runs and resumed checkpoints reproduce bit for bit
        layer_ids = self.aux_heads.tapped_layers(active_aux)
        hidden, layer_logits = self.layer_states(tokens, layer_ids, self._layer_head)
        logits = self.output(hidden)
        terms = self.aux_heads.terms(layer_ids, layer_logits, hidden, target, active_aux)
        return logits, {**terms, **self._attention_aux()}

    def _layer_head(self, x: Tensor, layer: int) -> Tensor:
        """Logits of the intermediate head after layer `layer` (1-based) from its output `x`."""
        assert self.aux_heads is not None
        return self.aux_heads.layer_logits(x, layer, self._shared_head)

    def _attention_aux(self) -> Dict[str, Tensor]:
        """The auxiliary terms of the last forward's attention (e.g. a learned span's cost), or none."""
        return attention_terms(self) if self.attention_has_terms else {}

    def _shared_head(self, x: Tensor) -> Tensor:
        """The final norm and output projection (shared intermediate heads use them)."""
        return self.output(self.final_norm(x))

    def aux_term_names(self) -> List[str]:
        """The terms of the aux heads (none when they are off) and of the attention (e.g. span_l1)."""
        heads = self.aux_heads.term_names() if self.aux_heads is not None else []
        return heads + attention_term_names(self)

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (the attention's terms have none)."""
        return self.aux_heads.term_parameters(name) if self.aux_heads is not None else []

    def after_update(self) -> None:
        """Attention upkeep after an optimizer step (e.g. learned spans back into range)."""
        super().after_update()
        if self.attention_has_terms:
            attention_after_update(self)

    def mae_modules(self) -> Dict[str, ExpertMixture]:
        """The layers' MAE attention modules, named `layer{i}` (none unless model.attention is mae)."""
        return layer_mae_modules(self.layers)

    def metrics(self) -> Dict[str, float]:
        """The MAE gates' statistics of the last forward (`mae/layer{i}/...`), the attention's log metrics (e.g.
        learned spans: mean, max, largest window), and the base's."""
        gates = mae_metrics(self.mae_modules(), None)
        return {**gates, **(attention_metrics(self) if self.attention_has_terms else {}), **super().metrics()}

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameters of the input embedding, the layers and what the output layer adds (tied ones counted once)."""
        embed = {id(p) for p in self.embed.parameters()}
        layer_params = {id(p): p.numel() for p in self.layers.parameters()}
        output_extra = sum(p.numel() for p in self.output.parameters() if id(p) not in embed)
        counts = {
            "embedding_parameters": sum(p.numel() for p in self.embed.parameters()),
            "layer_parameters": sum(layer_params.values()),
            "output_parameters_untied": output_extra,
        }
        if self.aux_heads is not None:
            counts["aux_head_parameters"] = self.aux_heads.parameter_count()
        if self.position_tables():
            counts["position_parameters"] = sum(table.numel() for table in self.position_tables())
        return counts


class AdaptiveSoftmaxLM(AdaptiveSoftmaxOutput, TransformerLM):
    """TransformerLM with an adaptive softmax output: `forward` returns the final hidden states (B, T, D)."""

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        return build_adaptive_softmax(cfg, vocab_size, cfg.d_model, self.embed)

    def forward(self, tokens: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Dict[str, Tensor]]:
        """Final hidden states (B, T, D) and named auxiliary terms (the attention's)."""
        return self.hidden(tokens), self._attention_aux()
