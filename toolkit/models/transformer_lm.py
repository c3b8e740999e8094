"""The decoder-only Transformer LM (GPT-style), for characters or words, windowed or streamed.

One model, three registered configurations: `transformer_lm` (this config), `char_transformer` (T64's deep
character model, toolkit.models.char_transformer) and `streaming_lm` (the streamed LM of adaptive attention
span and all-attention, toolkit.models.streaming_lm). The latter two keep their own config dataclasses (their
presets, checkpoints and fixtures compose unchanged) and build this model from a translated config.

Word-level options (Baevski & Auli 2019): `adaptive_input` replaces the embedding table by frequency bands
(toolkit.modules.adaptive_input) and `adaptive_softmax` replaces the output layer by the exact factorised
softmax over the same bands (toolkit.modules.adaptive_softmax), optionally tied to the input. With the
adaptive softmax the model's `forward` returns the final hidden states instead of logits, and the model
provides `output_nll(output, target)` (per-token NLL; the criterion and the evaluation use it) and
`output_log_prob(output)` (the full distribution). Without it, everything is as for the plain LM.

Positions are added either with the token embeddings (`positions_at: input`, dropout over the sum) or, as a
learned table (`positions_at: first_layer`) or one table per layer (`every_layer`, T64), at the layers' inputs
after the embedding dropout. `positions: rotary` adds none: every layer's self-attention rotates its queries
and keys to their positions (toolkit.modules.rotary). `positions: relative` adds none either: one learned table
of relative position keys (head_dim x S, N(0, 1)), shared by every layer's relative attention (adaptive_span, or
mae over it), tells the layers how far back each key is; such a model reads a corpus as streams (below).

`aux_heads` (off by default) adds T64's auxiliary heads (toolkit.modules.aux_heads): intermediate-layer
losses on the outputs of layers 1..n-1 and multiple targets from the final states, as named auxiliary terms.

The layers' attention is `model.attention`, a registered variant (toolkit.modules.attention): standard, mae, or
adaptive_span (relative attention with a learned span, whose cost is the auxiliary term `span_l1`); their
terms, upkeep and log metrics come through toolkit.modules.attention.terms.

With relative positions the model `carries_stream_cache` (toolkit.models.stream_cache): every layer keeps a
cache of its inputs at the most recent positions (detached), and the next block attends to them.
- `model(tokens, cache)` -> (output, aux, new_cache): the caller carries the cache (evaluation, tests).
- `model(tokens, target=..., reset=...)` -> (output, aux): the trainer's contract. The model carries the
  detached cache of the previous block of its streams itself; `reset=True` (the first block of an epoch)
  starts from an empty cache, `reset=None` (independent windows) uses none. `stream_state` /
  `load_stream_state` expose that cache so the task can checkpoint it per rank.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.models.adaptive_io import (
    AdaptiveSoftmaxOutput,
    build_adaptive_softmax,
    build_input_embedding,
    check_adaptive_config,
)
from toolkit.models.base import ToolkitModel
from toolkit.models.init_schemes import InitTargets, apply_init, check_scheme
from toolkit.models.stream_cache import Cache, StreamCache, keep_last
from toolkit.models.transformer_lm_config import (
    EmbeddingInit,
    LMPositions,
    PositionsAt,
    TransformerLMConfig,
    check_positions,
    layer_attention,
)
from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.mae import ExpertMixture
from toolkit.modules.attention.mae_gate import GATE_PARAM_PATTERN
from toolkit.modules.attention.mae_stats import layer_mae_modules, mae_metrics
from toolkit.modules.attention.registry import OptionBlock
from toolkit.modules.attention.relative import PersistentMemory, StreamInputs
from toolkit.modules.attention.terms import (
    attention_after_update,
    attention_metrics,
    attention_term_names,
    attention_terms,
)
from toolkit.modules.aux_heads import build_aux_heads, check_aux_heads, nest_aux_head_keys
from toolkit.modules.positional import build_positions, layer_position_tables
from toolkit.modules.rotary import RotaryPositions
from toolkit.modules.transformer_layer import TransformerLayer
from toolkit.registry import MODELS

__all__ = ["TransformerLM", "AdaptiveSoftmaxLM", "TransformerLMConfig", "LMPositions", "PositionsAt", "EmbeddingInit"]

LayerHead = Callable[[Tensor, int], Tensor]  # (output of a layer, its 1-based number) -> that layer's logits


@MODELS.register("transformer_lm", TransformerLMConfig)
class TransformerLM(ToolkitModel):
    """Token embedding (+ absolute positions) -> causal layers -> (final LayerNorm) -> vocabulary logits.

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
            raise TypeError(f"model.adaptive_softmax=true: build with {type(self).__name__}.create")
        attention, relative = layer_attention(cfg, self.attention_blocks(cfg))
        self.cfg, self.vocab_size, self.padding_idx = cfg, vocab_size, padding_idx
        init_std = cfg.d_model**-0.5 if cfg.embedding_init == EmbeddingInit.scaled else None  # None: N(0, 1)
        self.embed, self.embed_scale = build_input_embedding(cfg, vocab_size, cfg.d_model, padding_idx, init_std)
        if not cfg.scale_embedding and not cfg.adaptive_input:
            self.embed_scale = 1.0
        # at the input: a position module; at the layers' inputs: the tables themselves, (n_tables, max, d);
        # relative: none, but the position keys every layer's attention reads, (head_dim, S)
        self.positions: Optional[nn.Module | nn.Parameter] = None
        self.key_pe: Optional[nn.Parameter] = None
        self.stream: Optional[StreamCache] = None  # the carried cache (relative positions only)
        if relative is not None:
            self.key_pe = nn.Parameter(torch.randn(cfg.d_model // cfg.n_heads, relative.max_span))
            self.stream = StreamCache(cfg.n_layers, cfg.d_model, relative.max_span, cfg.cache_margin)
        elif cfg.positions == LMPositions.rotary:
            pass  # the layers' attention rotates queries and keys (below)
        elif cfg.positions_at == PositionsAt.input:
            self.positions = build_positions(cfg.positions, cfg.max_positions, cfg.d_model)
        else:
            n_tables = cfg.n_layers if cfg.positions_at == PositionsAt.every_layer else 1
            self.positions = layer_position_tables(n_tables, cfg.max_positions, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout if cfg.embed_dropout is None else cfg.embed_dropout)
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
                use_ffn=cfg.ffn,
            )
            for _ in range(cfg.n_layers)
        )
        if cfg.positions == LMPositions.rotary:
            self._use_rotary(RotaryPositions(cfg.d_model // cfg.n_heads, cfg.max_positions))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_ln and cfg.final_norm else nn.Identity()
        self.output: nn.Module = self._build_output(cfg, vocab_size)
        self.aux_heads = build_aux_heads(cfg.aux_heads, cfg.d_model, vocab_size, cfg.n_layers)  # None when off
        self._register_load_state_dict_pre_hook(nest_aux_head_keys)
        apply_init(self, cfg.init, InitTargets([(self.embed, self.embed_scale)], self.position_tables()))
        self.attention_has_terms = bool(attention_term_names(self))  # e.g. a learned span's span_l1

    @property
    def carries_stream_cache(self) -> bool:  # type: ignore[override]
        """With relative positions: the model reads streams, carrying a cache of earlier inputs."""
        return self.stream is not None

    def _use_rotary(self, rotary: RotaryPositions) -> None:
        """Every layer's self-attention rotates its queries and keys by the one shared `rotary`."""
        for layer in self.layers:
            if not isinstance(layer.self_attn, MultiheadAttention):
                raise ConfigError(
                    f"model.positions=rotary needs query-key attention; model.attention={self.cfg.attention} "
                    "attends with relative position keys of its own"
                )
            layer.self_attn.use_rotary(rotary)

    def attention_blocks(self, cfg: Any) -> Dict[str, OptionBlock]:
        """The option blocks of the config that `model.attention` takes defaults from: MAE's (`mae:`) and
        relative attention's (`adaptive_span:`)."""
        return {
            "mae": OptionBlock(cfg.mae, "mae"),
            "adaptive_span": OptionBlock(cfg.adaptive_span, "model.adaptive_span"),
        }

    def position_tables(self) -> List[Tensor]:
        """The learned absolute position tables (none for sinusoidal or relative positions)."""
        if isinstance(self.positions, nn.Parameter):
            return [self.positions]
        return [self.positions.weight] if isinstance(self.positions, nn.Embedding) else []

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        output = nn.Linear(cfg.d_model, vocab_size, bias=cfg.output_bias)
        if cfg.tie_embeddings:
            output.weight = self.embed.weight
        return output

    def project(self, hidden: Tensor) -> Tensor:
        """What forward returns from the last hidden states: logits (B, T, V)."""
        return self.output(hidden)

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

    # ---- the layers ------------------------------------------------------------------------------------
    def hidden(self, tokens: Tensor) -> Tensor:
        """Final-layer states (B, T, D) for tokens (B, T)."""
        return self.layer_states(tokens)[0]

    def layer_states(
        self, tokens: Tensor, tapped: Collection[int] = (), head: Optional[LayerHead] = None
    ) -> Tuple[Tensor, List[Tensor]]:
        """Final-layer states (B, T, D) and, for the layers numbered in `tapped` (1-based), in order, their
        outputs, or `head(output, layer)` computed as soon as the layer has run."""
        hidden, taps, _ = self.states(tokens, None, tapped, head)
        return hidden, taps

    def _input(self, tokens: Tensor) -> Tensor:
        """The embedded tokens (scaled, absolute positions added at the input), after the embedding dropout."""
        t = tokens.size(1)
        if self.key_pe is None and t > self.cfg.max_positions:
            raise ConfigError(f"input of {t} tokens is longer than model.max_positions={self.cfg.max_positions}")
        embedded = self.embed(tokens)
        if self.embed_scale != 1.0:
            embedded = embedded * self.embed_scale
        if isinstance(self.positions, nn.Module):
            return self.dropout(embedded + self.positions(torch.arange(t, device=tokens.device)))
        return self.dropout(embedded)

    def states(
        self, tokens: Tensor, cache: Optional[Cache], tapped: Collection[int] = (), head: Optional[LayerHead] = None
    ) -> Tuple[Tensor, List[Tensor], Optional[Cache]]:
        """`layer_states`, and with relative positions after the layers' carried inputs `cache` (None: an
        empty one), the caches for the next block of these streams (None without relative positions)."""
        x = self._input(tokens)
        tables = self.positions if isinstance(self.positions, nn.Parameter) else None  # at the layers' inputs
        if self.stream is not None:
            cache = cache if cache is not None else self.init_cache(tokens.size(0))
            self.stream.check(cache)
        new_cache: Cache = []
        taps: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            if tables is not None and i < tables.size(0):
                x = x + tables[i, : tokens.size(1)]
            if self.stream is None or self.key_pe is None:
                x = layer(x, causal=True)
            else:
                x = layer(x, causal=True, stream=StreamInputs(cache[i], self.key_pe))
                attention = layer.self_attn  # the cache holds what it attended over: its inputs
                window = self.stream.length(attention.last_window)
                new_cache.append(keep_last(cache[i], attention.last_stream_input, window))
            if i + 1 in tapped:
                taps.append(x if head is None else head(x, i + 1))
        hidden = self.final_norm(x)
        if self.cfg.final_dropout:
            hidden = F.dropout(hidden, self.cfg.final_dropout, self.training)
        return hidden, taps, (new_cache if self.stream is not None else None)

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: Tensor,
        cache: Optional[Cache] = None,
        target: Optional[Tensor] = None,
        reset: Optional[bool] = None,
        active_aux: Optional[set[str]] = None,
    ) -> tuple[Tensor, ...]:
        """Logits (B, T, V) (hidden states with an adaptive softmax) and the auxiliary terms: the active ones
        of the aux heads (none without heads or `target`; `active_aux` None means every term) and the
        attention's (e.g. span_l1 of a learned span). With relative positions see the module docstring:
        without `target`, also the caches for the next block; with it, the model carries its streams' cache."""
        if self.stream is None:
            if cache is not None or reset is not None:
                raise ValueError("a carried cache needs relative positions (model.positions=relative)")
            return self.forward_block(tokens, None, target, active_aux)[:2]
        if target is None:
            return self.forward_block(tokens, cache)
        if cache is not None:
            raise ValueError("pass either an explicit cache or target= (the model then carries the cache)")
        carried = self.stream.carried(tokens.size(0), reset)
        output, aux, new_cache = self.forward_block(tokens, carried, target, active_aux)
        if reset is not None:
            self.stream.training_cache = new_cache
        return output, aux

    def forward_block(
        self,
        tokens: Tensor,
        cache: Optional[Cache] = None,
        target: Optional[Tensor] = None,
        active_aux: Optional[set[str]] = None,
    ) -> Tuple[Tensor, Dict[str, Tensor], Optional[Cache]]:
        """tokens (B, T) -> the output, the aux terms and the caches for the next block (relative positions)."""
        heads = self.aux_heads if target is not None else None
        if heads is None:
            hidden, _, new_cache = self.states(tokens, cache)
            return self.project(hidden), self._attention_aux(), new_cache
        layer_ids = heads.tapped_layers(active_aux)
        hidden, layer_logits, new_cache = self.states(tokens, cache, layer_ids, self._layer_head)
        if self.stream is not None:
            # the streamed configuration's order (its runs and checkpoints reproduce bit for bit): the span
            # cost, then the heads' terms before the output layer
            terms = heads.terms(layer_ids, layer_logits, hidden, target, active_aux)
            return self.project(hidden), {**self._attention_aux(), **terms}, new_cache
        # T64's order of operations (each head as its layer runs, the output before the k-ahead heads): backward
        # sums gradients in this order, which char_transformer's runs and resumed checkpoints reproduce bit for bit
        logits = self.project(hidden)
        terms = heads.terms(layer_ids, layer_logits, hidden, target, active_aux)
        return logits, {**terms, **self._attention_aux()}, new_cache

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
        """The terms of the aux heads (none when they are off) and of the attention (e.g. span_l1); the
        attention's first in the streamed configuration, as its forward returns them."""
        heads = self.aux_heads.term_names() if self.aux_heads is not None else []
        attention = attention_term_names(self)
        return attention + heads if self.stream is not None else heads + attention

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (the attention's terms have none)."""
        return self.aux_heads.term_parameters(name) if self.aux_heads is not None else []

    # ---- the trainer's hooks -----------------------------------------------------------------------------
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
        """Parameters of the input embedding, the layers and what the output layer adds (tied ones counted
        once); with relative positions their keys and the persistent memory; MAE's gates."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        embed = {id(p) for p in self.embed.parameters()}
        counts = {"embedding_parameters": count(self.embed)}
        if self.key_pe is not None:
            counts["position_key_parameters"] = self.key_pe.numel()
        counts["layer_parameters"] = count(self.layers)
        if self.key_pe is not None:
            persistent = [m for m in self.layers.modules() if isinstance(m, PersistentMemory)]
            counts["persistent_memory_parameters"] = sum(count(m) for m in persistent)
        counts["output_parameters_untied"] = sum(p.numel() for p in self.output.parameters() if id(p) not in embed)
        if self.aux_heads is not None:
            counts["aux_head_parameters"] = self.aux_heads.parameter_count()
        if self.position_tables():
            counts["position_parameters"] = sum(table.numel() for table in self.position_tables())
        gate = sum(p.numel() for n, p in self.named_parameters() if re.search(GATE_PARAM_PATTERN, n))
        if gate:  # MAE attention
            counts["gate_parameters"] = gate
        return counts

    # ---- the streams' cache (relative positions) -------------------------------------------------------------
    def init_cache(self, batch: int) -> Cache:
        """Empty caches (nothing before the start of a stream; such keys are masked, not zeros)."""
        assert self.stream is not None and self.key_pe is not None, "absolute positions carry no cache"
        return self.stream.empty(batch, self.key_pe)

    def cache_length(self, window: int) -> int:
        """Inputs a layer keeps for the next block after attending over a window of `window` keys."""
        assert self.stream is not None, "absolute positions carry no cache"
        return self.stream.length(window)

    def stream_state(self) -> Optional[List[Tensor]]:
        """The carried training cache (CPU copies), or None (none yet, or absolute positions)."""
        return self.stream.state() if self.stream is not None else None

    def load_stream_state(self, state: Optional[List[Tensor]]) -> None:
        """Restore a cache from `stream_state` (None: start the next block without one)."""
        if self.stream is not None and self.key_pe is not None:
            self.stream.load(state, self.key_pe.device)


class AdaptiveSoftmaxLM(AdaptiveSoftmaxOutput, TransformerLM):
    """TransformerLM with an adaptive softmax output: `forward` returns the final hidden states (B, T, D)."""

    def _build_output(self, cfg: TransformerLMConfig, vocab_size: int) -> nn.Module:
        return build_adaptive_softmax(cfg, vocab_size, cfg.d_model, self.embed)

    def project(self, hidden: Tensor) -> Tensor:
        return hidden
