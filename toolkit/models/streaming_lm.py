"""Streamed (cached) language model of adaptive attention span and all-attention (Sukhbaatar et al. 2019).

The corpus is read as contiguous streams in blocks of M tokens; every layer keeps a cache of its own inputs
at the most recent positions (detached), and the next block attends to them. The layer layout is the
reference's (facebookresearch/adaptive-span): attention without biases, learned relative-position keys
shared by all layers, post-LayerNorm, ReLU FFN (dropped in all-attention layers), dropout on the attention
weights and the FFN hidden units, optional dropout on the input embeddings and the final hidden states.

The model returns logits and a dict of auxiliary terms ('span_l1': sum over layers of the mean span, when
the span is adaptive); weighting them is the criterion's job. The layers' attention is `model.attention`:
`adaptive_span` (the relative attention the span fields describe) or `mae` (MAE's gate reweighting its heads).
Word-level models take adaptive input and an adaptive softmax (toolkit.models.adaptive_io); with the latter,
`StreamingLM.create` builds an `AdaptiveSoftmaxStreamingLM`, which returns the last hidden states instead of
logits and scores them itself.
`aux_heads` (off by default) adds T64's auxiliary heads (toolkit.modules.aux_heads) on each layer's output
and the last hidden states; their terms join the aux dict.

Two ways to call it:
- `model(tokens, cache)` -> (logits, aux, new_cache): the caller carries the cache (evaluation, tests).
- `model(tokens, target=..., reset=...)` -> (logits, aux): the trainer's contract (the criterion passes
  `target`). The model carries the detached cache of the previous block of its streams itself; `reset=True`
  (the first block of an epoch) starts from an empty cache, `reset=None` (independent windows) uses none.
  `stream_state` / `load_stream_state` expose that cache so the task can checkpoint it per rank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING
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
from toolkit.models.init_schemes import InitTargets, apply_init, check_scheme
from toolkit.modules.attention import Context
from toolkit.modules.attention.mae_gate import GATE_PARAM_PATTERN
from toolkit.modules.attention.registry import AttentionFactory, OptionBlock, build_choice, choose_attention
from toolkit.modules.attention.span_attention import AdaptiveSpanConfig, SpanMode
from toolkit.modules.aux_heads import AuxHeadsConfig, build_aux_heads, check_aux_heads
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import FeedForward
from toolkit.registry import MODELS

Cache = List[Tensor]  # one (B, C_l, D) tensor of layer inputs per layer


@dataclass
class StreamingLMConfig(AdaptiveIOConfig, MemoryConfigMixin):
    """Architecture of the streamed LM; defaults are the 12-layer text8 model of the adaptive-span paper.
    Word-level models add adaptive input/softmax (AdaptiveIOConfig's fields)."""

    vocab_size: int = MISSING
    """Output classes (set by the task from its dictionary)."""
    d_model: int = 512
    """Hidden size."""
    n_layers: int = 12
    """Number of layers."""
    n_heads: int = 8
    """Attention heads per layer."""
    d_ff: int = 2048
    """Inner size of the ReLU FFN."""
    block_size: int = 512
    """Tokens per streamed block (M); the task cuts streams into blocks of this length."""
    attn_span: int = 8192
    """Maximum span S: the most keys a query can see, and the size of the position-key table."""
    adaptive_span: bool = True
    """Learn a span per head (soft ramp mask, trimming); false: a fixed hard window of attn_span keys."""
    span_ramp: int = 32
    """Ramp R of the soft mask."""
    span_init: float = 0.0
    """Initial span parameter r in [0, 1] (z = r * S; 0 starts every head at span R)."""
    dynamic_span: bool = False
    """Predict the span per position from the input (paper section 2.2); needs adaptive_span."""
    cache_margin: int = 64
    """Cached positions kept beyond the current window (L - 1 positions back), so a span that grows at the
    next step still finds its keys (the reference keeps 64 extra). With dynamic spans the window is the
    current block's (largest predicted span + R, rounded up); a later block whose spans reach farther than
    the cache sees only the cached keys."""
    persistent_memory: int = 0
    """N persistent key/value vectors per layer and head (all-attention); 0 = off."""
    attention: Any = "adaptive_span"
    """The layers' attention: 'adaptive_span' (relative attention as the span fields here say; a mapping
    {name: adaptive_span, span_ramp: 16, ...} overrides them) or 'mae' ({name: mae, drop: 1, ...}: MAE's gate
    reweighting the heads of that relative attention). Plain attention cannot use the streamed cache."""
    keep_ffn: bool = False
    """Keep the FFN sublayer in all-attention layers (ablation); layers without persistent memory always
    have one."""
    dropout: float = 0.3
    """Dropout on attention weights (context and persistent) and on FFN hidden units."""
    emb_dropout: float = 0.0
    """Dropout on the input embeddings and on the last hidden states."""
    init: str = "fairseq"
    """Parameter initialisation: 'fairseq' (the default here: the adaptive-span reference's own PyTorch
    defaults, unscaled embeddings, positions inside attention, which learn fast) or 'gpt2'; relative position
    keys, spans and persistent memory keep theirs under both (docs/init.md)."""
    aux_heads: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)
    """Auxiliary prediction heads (T64): intermediate-layer losses on the outputs of layers 1..n-1 and
    multiple targets from the last hidden states; off by default. They need the plain output layer."""


@dataclass
class StreamingLMModelConfig(StreamingLMConfig):
    """The `model=streaming_lm` config group: StreamingLMConfig with sizes taken from the task when 0."""

    vocab_size: int = 0
    """Output classes; 0 = the task's vocabulary size."""
    block_size: int = 0
    """Tokens per streamed block; 0 = the task's tokens_per_sample (a non-zero value must equal it)."""
    name: str = "streaming_lm"
    """Registry name."""


def validate_config(cfg: StreamingLMConfig) -> None:
    """Raise ConfigError naming the first inconsistent key."""
    if not isinstance(cfg.vocab_size, int) or cfg.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size must be a positive integer, got {cfg.vocab_size!r}")
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}")
    for key in ("n_layers", "n_heads", "d_ff", "block_size", "attn_span"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(cfg, key)}")
    for key in ("span_ramp", "cache_margin", "persistent_memory"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"model.{key} must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.span_init <= 1.0:
        raise ConfigError(f"model.span_init must be in [0, 1], got {cfg.span_init}")
    if cfg.dynamic_span and not cfg.adaptive_span:
        raise ConfigError("model.dynamic_span=true needs model.adaptive_span=true")
    check_adaptive_config(cfg, tie_embeddings=False)
    check_scheme(cfg.init)
    check_aux_heads(cfg.aux_heads, cfg.adaptive_softmax)


def relative_settings(cfg: StreamingLMConfig) -> AdaptiveSpanConfig:
    """The relative attention the span fields of the model config describe."""
    mode = SpanMode.fixed if not cfg.adaptive_span else SpanMode.dynamic if cfg.dynamic_span else SpanMode.adaptive
    return AdaptiveSpanConfig(cfg.attn_span, mode, cfg.span_ramp, cfg.span_init, cfg.persistent_memory)


def layer_attention(cfg: StreamingLMConfig) -> Tuple[AttentionFactory, StreamingLMConfig]:
    """The layers' attention factory (from `model.attention`), and the config with its span fields updated
    to the relative attention it builds (a mapping may override them)."""
    blocks = {"adaptive_span": OptionBlock(relative_settings(cfg), "model")}
    choice = choose_attention(cfg.attention, "model.attention", blocks)
    relative = choice.options if choice.name == "adaptive_span" else relative_settings(cfg)
    if relative.max_span <= 0:
        raise ConfigError(f"model.attention.max_span must be positive, got {relative.max_span}")
    attention = build_choice(
        choice, Context.streamed, "model.attention", max_len=relative.max_span, n_heads=cfg.n_heads, relative=relative
    )
    cfg = replace(
        cfg,
        attn_span=relative.max_span,
        adaptive_span=relative.span != SpanMode.fixed,
        dynamic_span=relative.span == SpanMode.dynamic,
        span_ramp=relative.span_ramp,
        span_init=relative.span_init,
        persistent_memory=relative.persistent_memory,
    )
    return attention, cfg


class StreamingLayer(nn.Module):
    """Cached relative attention then (optionally) a ReLU FFN, each as LayerNorm(x + sublayer(x))."""

    def __init__(self, cfg: StreamingLMConfig, use_ffn: bool, attention: Optional[AttentionFactory] = None):
        super().__init__()
        attention = attention if attention is not None else layer_attention(cfg)[0]
        self.attn = attention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout) if use_ffn else None
        self.ffn_norm = nn.LayerNorm(cfg.d_model) if use_ffn else None

    def forward(self, h: Tensor, cache: Tensor, key_pe: Tensor) -> tuple[Tensor, Optional[Tensor], int]:
        """Returns the layer output, its span cost (or None) and the attention window it used."""
        attn = self.attn(h, cache, key_pe)
        h = self.attn_norm(h + attn.out)
        if self.ffn is not None:
            h = self.ffn_norm(h + self.ffn(h))
        return h, attn.span_cost, attn.window


def keep_last(cache: Tensor, h: Tensor, length: int) -> Tensor:
    """The last `length` positions of [cache ; h], detached (the next block's cache)."""
    if length <= h.size(1):
        return h[:, h.size(1) - length :].detach()
    older = cache[:, max(0, cache.size(1) - (length - h.size(1))) :]
    return torch.cat([older, h], dim=1).detach()


@MODELS.register("streaming_lm", StreamingLMModelConfig)
class StreamingLM(ToolkitModel):
    """Decoder-only LM over streamed blocks with per-layer caches (see the module docstring)."""

    carries_stream_cache = True

    def __init__(self, cfg: StreamingLMConfig, padding_idx: Optional[int] = None):
        super().__init__()
        validate_config(cfg)
        attention, cfg = layer_attention(cfg)
        if cfg.adaptive_softmax and not isinstance(self, AdaptiveSoftmaxStreamingLM):
            raise TypeError("model.adaptive_softmax=true: build with StreamingLM.create(cfg)")
        self.cfg, self.padding_idx = cfg, padding_idx
        self._stream_cache: Optional[Cache] = None  # training streams' cache (trainer contract), not a buffer
        head_dim = cfg.d_model // cfg.n_heads
        # a plain table keeps PyTorch's N(0, 1) init unscaled, as the reference; adaptive input scales itself
        self.embed, _ = build_input_embedding(cfg, cfg.vocab_size, cfg.d_model, padding_idx, init_std=None)
        # one table for all layers and heads, column S-1-x for distance x (the reference's N(0, 1) init)
        self.key_pe = nn.Parameter(torch.randn(head_dim, cfg.attn_span))
        use_ffn = cfg.persistent_memory == 0 or cfg.keep_ffn
        self.layers = nn.ModuleList(StreamingLayer(cfg, use_ffn, attention) for _ in range(cfg.n_layers))
        self.output: nn.Module = self._build_output()
        self.aux_heads = build_aux_heads(cfg.aux_heads, cfg.d_model, cfg.vocab_size, cfg.n_layers)  # None when off
        apply_init(self, cfg.init, InitTargets([(self.embed, 1.0)]))

    def _build_output(self) -> nn.Module:
        return nn.Linear(self.cfg.d_model, self.cfg.vocab_size)

    def project(self, h: Tensor) -> Tensor:
        """What forward returns from the last hidden states: logits (B, M, V)."""
        return self.output(h)

    @classmethod
    def create(cls, cfg: StreamingLMConfig, padding_idx: Optional[int] = None) -> "StreamingLM":
        """The model of a config: an AdaptiveSoftmaxStreamingLM when cfg.adaptive_softmax, else a StreamingLM."""
        model_cls = AdaptiveSoftmaxStreamingLM if cfg.adaptive_softmax else StreamingLM
        return model_cls(cfg, padding_idx)

    def cache_length(self, window: int) -> int:
        """Inputs to keep for the next block: a window of L keys reaches L - 1 positions back, plus the
        margin for spans that grow at the next optimizer step; never more than S - 1."""
        return min(self.cfg.attn_span, window + self.cfg.cache_margin) - 1

    def init_cache(self, batch: int) -> Cache:
        """Empty caches (nothing before the start of a stream; such keys are masked, not zeros)."""
        return [self.key_pe.new_zeros(batch, 0, self.cfg.d_model) for _ in self.layers]

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "StreamingLM":
        """The model of a `model=streaming_lm` config for a task (vocabulary and block length from it)."""
        values = {f.name: cfg[f.name] for f in fields(StreamingLMConfig)}
        values["vocab_size"] = cfg.vocab_size or task.vocab_size
        task_block = int(getattr(task.cfg, "tokens_per_sample", 0) or 0)
        if cfg.block_size and task_block and cfg.block_size != task_block:
            raise ConfigError(
                f"model.block_size={cfg.block_size} differs from task.tokens_per_sample={task_block} "
                "(the streamed block length); set model.block_size=0 to take the task's"
            )
        values["block_size"] = cfg.block_size or task_block or StreamingLMConfig.block_size
        model_cfg = StreamingLMConfig(**values)
        # the padding id matters only to the adaptive layers (a zero embedding row; pad targets ignored)
        padding_idx = getattr(task, "pad_idx", None) if (cfg.adaptive_input or cfg.adaptive_softmax) else None
        return cls.create(model_cfg, padding_idx)

    def aux_term_names(self) -> List[str]:
        """The auxiliary terms forward can return: the spans' L1 cost when spans are learned, and the terms
        of the aux heads."""
        heads = self.aux_heads.term_names() if self.aux_heads is not None else []
        return (["span_l1"] if self.cfg.adaptive_span else []) + heads

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (the span cost has none of its own)."""
        return self.aux_heads.term_parameters(name) if self.aux_heads is not None else []

    def forward(
        self,
        tokens: Tensor,
        cache: Optional[Cache] = None,
        target: Optional[Tensor] = None,
        reset: Optional[bool] = None,
        active_aux: Optional[set[str]] = None,
    ) -> tuple[Tensor, ...]:
        """With `target` (the trainer): (logits, aux), carrying the streams' cache itself (module docstring).
        Without: tokens (B, M) -> logits (B, M, V), aux terms, the caches for the next block of the streams.
        Of the aux heads' terms only those in `active_aux` are computed (None: all); the span cost is a
        by-product, always returned."""
        if target is None:
            return self.forward_block(tokens, cache)
        if cache is not None:
            raise ValueError("pass either an explicit cache or target= (the model then carries the cache)")
        carried = self._stream_cache if reset is not None and not reset else None
        if carried is not None and carried[0].size(0) != tokens.size(0):
            raise ValueError(f"the carried cache holds {carried[0].size(0)} streams, the batch {tokens.size(0)}")
        logits, aux, new_cache = self.forward_block(tokens, carried, target, active_aux)
        if reset is not None:
            self._stream_cache = new_cache
        return logits, aux

    def forward_block(
        self,
        tokens: Tensor,
        cache: Optional[Cache] = None,
        target: Optional[Tensor] = None,
        active_aux: Optional[set[str]] = None,
    ) -> tuple[Tensor, Dict[str, Tensor], Cache]:
        """tokens (B, M) -> logits (B, M, V) (hidden states with an adaptive softmax), aux terms, the caches
        for the next block of these streams. The aux heads' terms need `target` (B, M)."""
        if cache is None:
            cache = self.init_cache(tokens.size(0))
        if len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} entries for {len(self.layers)} layers")
        h = F.dropout(self.embed(tokens), self.cfg.emb_dropout, self.training)
        new_cache: Cache = []
        span_costs: List[Tensor] = []
        heads = self.aux_heads if target is not None else None
        layer_ids = heads.tapped_layers(active_aux) if heads is not None else []
        layer_logits: List[Tensor] = []  # logits of the active intermediate heads, computed as we go
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache)):
            out, span_cost, window = layer(h, layer_cache, self.key_pe)
            new_cache.append(keep_last(layer_cache, h, self.cache_length(window)))
            if span_cost is not None:
                span_costs.append(span_cost)
            h = out
            if i + 1 in layer_ids:  # post-LN layers: the head reads the layer's (normalised) output
                layer_logits.append(heads.layer_logits(h, i + 1, self.output))
        h = F.dropout(h, self.cfg.emb_dropout, self.training)
        aux = {"span_l1": torch.stack(span_costs).sum()} if span_costs else {}
        if heads is not None:
            aux.update(heads.terms(layer_ids, layer_logits, h, target, active_aux))
        return self.project(h), aux, new_cache

    @torch.no_grad()
    def clamp_spans(self) -> None:
        """Keep every span parameter in [0, 1]; call after each optimizer step."""
        for layer in self.layers:
            if layer.attn.span is not None:
                layer.attn.span.clamp_()

    @torch.no_grad()
    def span_stats(self) -> Tensor:
        """Span z per layer and head, (n_layers, n_heads) on CPU: the learned span (static), the mean
        predicted span of the last forward (dynamic), or S everywhere for a fixed window."""
        fixed = torch.full((self.cfg.n_heads,), float(self.cfg.attn_span))
        spans = [layer.attn.span for layer in self.layers]
        return torch.stack([fixed if span is None else span.stats() for span in spans])

    def current_windows(self) -> List[int]:
        """Keys per query each layer uses now (static spans; S for fixed or dynamic spans)."""
        return [
            layer.attn.span.window_length() if layer.attn.span is not None else self.cfg.attn_span
            for layer in self.layers
        ]

    # ---- the trainer's hooks ---------------------------------------------------------------------------
    def after_update(self) -> None:
        """Called by the trainer after every optimizer step: spans back into [0, S]."""
        self.clamp_spans()

    def metrics(self) -> Dict[str, float]:
        """Learned spans for the training log: per layer and head, their mean and max, the largest window;
        then the base class's (product-key memory usage)."""
        if not self.cfg.adaptive_span:
            return super().metrics()
        spans = self.span_stats()
        named = {f"span/layer{layer}_head{head}": float(z) for (layer, head), z in np.ndenumerate(spans.numpy())}
        named.update({"span/mean": float(spans.mean()), "span/max": float(spans.max())})
        named["span/window_max"] = float(max(self.current_windows()))
        return {**named, **super().metrics()}

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameter counts by part (for dry runs)."""
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        persistent = sum(count(layer.attn.persistent) for layer in self.layers if layer.attn.persistent is not None)
        embed = {id(p) for p in self.embed.parameters()}
        parts = {
            "embedding_parameters": count(self.embed),
            "position_key_parameters": self.key_pe.numel(),
            "layer_parameters": count(self.layers),
            "persistent_memory_parameters": persistent,
            "output_parameters_untied": sum(p.numel() for p in self.output.parameters() if id(p) not in embed),
            **({"aux_head_parameters": self.aux_heads.parameter_count()} if self.aux_heads is not None else {}),
        }
        gate = sum(p.numel() for n, p in self.named_parameters() if re.search(GATE_PARAM_PATTERN, n))
        if gate:  # MAE attention
            parts["gate_parameters"] = gate
        return parts

    # ---- the training streams' cache -----------------------------------------------------------------
    def stream_state(self) -> Optional[List[Tensor]]:
        """The carried training cache (CPU copies), or None before the first stream block."""
        if self._stream_cache is None:
            return None
        return [c.detach().cpu().clone() for c in self._stream_cache]

    def load_stream_state(self, state: Optional[List[Tensor]]) -> None:
        """Restore a cache from `stream_state` (None: start the next block without one)."""
        if state is None:
            self._stream_cache = None
            return
        if len(state) != len(self.layers):
            raise ValueError(f"stream cache has {len(state)} entries for {len(self.layers)} layers")
        device = self.key_pe.device
        self._stream_cache = [c.to(device) for c in state]


class AdaptiveSoftmaxStreamingLM(AdaptiveSoftmaxOutput, StreamingLM):
    """StreamingLM with an adaptive softmax output: forward returns the last hidden states (B, M, D), which
    the criterion and the evaluations score through `output_nll`."""

    def _build_output(self) -> nn.Module:
        return build_adaptive_softmax(self.cfg, self.cfg.vocab_size, self.cfg.d_model, self.embed)

    def project(self, h: Tensor) -> Tensor:
        return h
