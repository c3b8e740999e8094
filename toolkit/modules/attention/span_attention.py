"""`adaptive_span`: relative-position attention (relative.py) with a fixed, adaptive or dynamic span and
optional persistent memory (Sukhbaatar et al. 2019), as a registered attention variant.

In a decoder LM with relative positions (`model.positions=relative`, the streamed configuration) it attends
over [the layer's carried cache of earlier inputs ; block] with the one position-key table the model shares
among its layers (`StreamInputs`, context `streamed`). In a windowed causal model (decoder-only LMs with
absolute positions) and in an encoder-decoder's decoder self-attention it is the same computation with the
cache holding only what came before the window: nothing for a window (earlier slots are masked, not zeros);
while decoding step by step, the keys and values of the last max_span - 1 target positions, projected once
(in the decoder's cache dict, so incremental decoding equals full recomputation). There each layer owns its
position-key table (head_dim x max_span, N(0, 1) as the reference's).

Relative positions and spans measure distance back within one sequence: the variant is causal only, so it
cannot be an encoder's (bidirectional) self-attention or encoder-decoder attention.

A learned span adds the auxiliary term `span_l1` (sum over layers of the mean span z; weight it with
`aux_weights.span_l1`), is clamped after each update and logged (span/layer{l}_head{h}, span/mean, span/max,
span/window_max): through toolkit.modules.attention.terms, which every model calls. `span_stats` and
`current_windows` read the spans and windows of any model's span modules (tk-analyze spans, benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.attention.adaptive_span import AdaptiveMask, DynamicSpanMask
from toolkit.modules.attention.base import Cache
from toolkit.modules.attention.registry import ATTENTIONS, AttentionFactory, AttentionVariant, BuildSpec, Context
from toolkit.modules.attention.relative import AttentionOutput, RelativeAttention, StreamInputs
from toolkit.modules.attention.terms import AttentionTerms

# cache entries: keys and values (B, H, T, d_h) of the earlier positions, batch-first for reorder_cache
KEYS_KEY, VALUES_KEY = "relative_k", "relative_v"
SPAN_TERM = "span_l1"


class SpanMode(StrEnum):
    """How far back each head looks."""

    fixed = "fixed"  # a hard window of max_span keys (no span parameters)
    adaptive = "adaptive"  # a learned span per head (soft ramp mask; the window is trimmed to it)
    dynamic = "dynamic"  # a span predicted per position and head from the layer input


@dataclass
class AdaptiveSpanConfig:
    """Options of relative-position attention with a span."""

    max_span: int = 0
    """Maximum span S (keys a query can see; the size of the position-key table). 0 = the model's longest
    input (model.max_positions); the streamed LM's comes from model.attn_span."""
    span: SpanMode = SpanMode.adaptive
    """fixed (hard window of S keys), adaptive (learned per head) or dynamic (predicted per position)."""
    span_ramp: int = 32
    """Ramp R of the soft span mask."""
    span_init: float = 0.0
    """Initial span parameter r in [0, 1] (z = r * S)."""
    persistent_memory: int = 0
    """N persistent key/value vectors per head (all-attention); 0 = off."""


def validate_span_config(cfg: AdaptiveSpanConfig, n_heads: Optional[int], prefix: str) -> None:
    """One-line ConfigError naming the first bad option."""
    for key in ("max_span", "span_ramp", "persistent_memory"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{prefix}{key} must be >= 0, got {getattr(cfg, key)}")
    if not 0.0 <= cfg.span_init <= 1.0:
        raise ConfigError(f"{prefix}span_init must be in [0, 1], got {cfg.span_init}")


def build_span(cfg: AdaptiveSpanConfig, d_model: int, n_heads: int) -> Optional[nn.Module]:
    """The span mask of one layer (None for a fixed window)."""
    if cfg.span == SpanMode.fixed:
        return None
    if cfg.span == SpanMode.dynamic:
        return DynamicSpanMask(d_model, n_heads, cfg.max_span, cfg.span_ramp, cfg.span_init)
    return AdaptiveMask(n_heads, cfg.max_span, cfg.span_ramp, cfg.span_init)


class CausalRelativeAttention(AttentionTerms, RelativeAttention):
    """Relative attention behind TransformerLayer's interface: causal self-attention over a window, step by step
    with a cache dict, or over a block after a carried cache of the layer's inputs (`stream`; see the module
    docstring). Owns its position keys, unless `shared_keys`: the model then passes the table all its layers
    share with every call (`stream`)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, cfg: AdaptiveSpanConfig, shared_keys: bool = False):
        span = build_span(cfg, d_model, n_heads)  # first: a dynamic span's predictor draws from the RNG before q/k/v
        super().__init__(d_model, n_heads, cfg.max_span, dropout, span, cfg.persistent_memory)
        self.span_settings = cfg  # what it was built from (analyses report it)
        self.key_pe: Optional[nn.Parameter] = None
        if not shared_keys:
            self.key_pe = nn.Parameter(torch.randn(self.head_dim, cfg.max_span))
        self.last_span_cost: Optional[Tensor] = None  # span L1 term of the last forward (None: fixed span)
        self.last_window = cfg.max_span  # keys per query of the last forward (what a carried cache must keep)
        # the inputs of the last streamed forward (detached): what the next block's cache is cut from (a
        # pre-LN layer's attention sees its normalised input, a post-LN layer's the layer input itself)
        self.last_stream_input: Optional[Tensor] = None

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        *,
        key_padding_mask: Optional[Tensor] = None,
        causal: bool = False,
        cache: Optional[Cache] = None,
        static_kv: bool = False,
        context: Optional[Tensor] = None,
        stream: Optional[StreamInputs] = None,
    ) -> Tensor:
        """(B, T, D) -> (B, T, D); with `cache`, T new positions after those cached; with `stream`, the block
        after the carried inputs `stream.memory`, with the shared position keys `stream.position_keys`."""
        if not causal or static_kv or (key is not None and key is not query):
            raise ValueError("adaptive_span attention is causal self-attention only")
        if key_padding_mask is not None:
            raise ValueError("adaptive_span attention takes no key padding mask (causality keeps right padding out)")
        if stream is not None:
            result = RelativeAttention.forward(self, query, stream.memory, stream.position_keys)
        elif self.key_pe is None:
            raise ValueError("this attention shares its model's position keys: pass them with stream=")
        elif cache is None:
            result = RelativeAttention.forward(
                self, query, query.new_zeros(query.size(0), 0, self.d_model), self.key_pe
            )
        else:
            result = self.step(query, cache)
        self.last_span_cost, self.last_window = result.span_cost, result.window
        self.last_stream_input = query.detach() if stream is not None else None
        return result.out

    def step(self, h: Tensor, cache: Cache) -> AttentionOutput:
        """Incremental decoding: the block `h` (B, M, D) after the positions whose keys and values the cache
        holds (projected once, as the window path would project them from the cached inputs; a padded slot
        is a zero key and value there too, the projections having no bias)."""
        if self.key_pe is None:
            raise ValueError("step-by-step decoding needs the module's own position keys")
        z, window = self.span_window(h)
        q = self._split(self.q_proj(h)) / math.sqrt(self.head_dim)
        k, v = self._split(self.k_proj(h)), self._split(self.v_proj(h))
        if KEYS_KEY in cache:
            k, v = torch.cat([cache[KEYS_KEY], k], dim=2), torch.cat([cache[VALUES_KEY], v], dim=2)
        # keep what the farthest window can reach: max_span - 1 positions back
        cache[KEYS_KEY], cache[VALUES_KEY] = last_positions(k, self.max_span - 1), last_positions(v, self.max_span - 1)
        needed = window - 1 + h.size(1)
        missing = max(0, needed - k.size(2))
        k, v = last_positions(k, needed), last_positions(v, needed)
        if missing:
            pad = k.new_zeros(k.size(0), k.size(1), missing, k.size(3))
            k, v = torch.cat([pad, k], dim=2), torch.cat([pad, v], dim=2)
        return self.attend_window(h, q, k, v, self.key_pe, window, missing, z)

    # ---- what the model gets from it (toolkit.modules.attention.terms) ----------------------------------------
    def aux_term_names(self) -> List[str]:
        """A learned span's cost `span_l1` (mean z; summed over layers by the model)."""
        return [SPAN_TERM] if self.span is not None else []

    def aux_terms(self) -> Dict[str, Tensor]:
        return {SPAN_TERM: self.last_span_cost} if self.last_span_cost is not None else {}

    def after_update(self) -> None:
        """Keep the span parameters in range."""
        if self.span is not None:
            self.span.clamp_()

    def current_window(self) -> int:
        """Keys per query now: the learned span's trimmed window; S for a fixed or a dynamic span (the latter's
        depends on the input)."""
        return self.span.window_length() if self.span is not None else self.max_span

    @classmethod
    def summary_metrics(cls, modules: Sequence[AttentionTerms]) -> Dict[str, float]:
        """The learned spans: per module (layer l, counting the model's span modules in order) and head, their
        mean and max over all, and the largest window."""
        spans = [m for m in modules if isinstance(m, CausalRelativeAttention) and m.span is not None]
        if not spans:
            return {}
        z = torch.stack([m.span.stats() for m in spans])  # type: ignore[union-attr]
        out = {f"span/layer{layer}_head{head}": float(v) for (layer, head), v in np.ndenumerate(z.numpy())}
        out.update({"span/mean": float(z.mean()), "span/max": float(z.max())})
        out["span/window_max"] = float(max(m.current_window() for m in spans))
        return out


def span_modules(model: nn.Module) -> List[CausalRelativeAttention]:
    """The relative attention modules of `model`, in order (one per layer of a decoder LM)."""
    return [m for m in model.modules() if isinstance(m, CausalRelativeAttention)]


@torch.no_grad()
def span_stats(model: nn.Module) -> Tensor:
    """Span z per relative attention module (layer) and head, (layers, heads) on CPU: the learned span
    (static), the mean predicted span of the last forward (dynamic), or S everywhere for a fixed window."""
    return torch.stack(
        [
            m.span.stats() if m.span is not None else torch.full((m.n_heads,), float(m.max_span))
            for m in span_modules(model)
        ]
    )


def current_windows(model: nn.Module) -> List[int]:
    """Keys per query each relative attention module (layer) of `model` uses now (S for fixed or dynamic spans)."""
    return [m.current_window() for m in span_modules(model)]


def last_positions(x: Tensor, n: int) -> Tensor:
    """The last n time steps of (B, H, T, d_h) (all of them when T <= n; none for n = 0)."""
    return x[:, :, max(0, x.size(2) - n) :]


def build_adaptive_span(cfg: AdaptiveSpanConfig, spec: BuildSpec) -> AttentionFactory:
    cfg = replace(cfg, max_span=cfg.max_span or spec.max_len)
    if cfg.max_span <= 0:
        raise ConfigError("attention 'adaptive_span' needs max_span > 0 (the model has no longest input to take)")
    # streamed: the model's one table of position keys serves every layer
    return partial(CausalRelativeAttention, cfg=cfg, shared_keys=spec.context == Context.streamed)


CAUSAL_ONLY = "relative positions and spans measure distance back within one sequence"
ATTENTIONS.register("adaptive_span", AdaptiveSpanConfig)(
    AttentionVariant(
        build_adaptive_span,
        unsupported={
            Context.bidirectional: f"it is causal ({CAUSAL_ONLY}); an encoder attends in both directions",
            Context.cross: f"{CAUSAL_ONLY}, not between source and target",
        },
        validate=validate_span_config,
    )
)
