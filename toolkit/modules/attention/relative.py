"""Cached self-attention with learned relative-position keys, span trimming and persistent memory.

The streamed LM (Transformer-XL style, as in facebookresearch/adaptive-span) attends from a block of M
queries to a window of the L most recent positions each, the query's own position included: distances
0..L-1, i.e. ordinary causal attention within the window. (Deviation: the reference's window is shifted one
step back, distances 1..L, the query itself excluded, and it fills the cache of a new stream with zero
vectors that get attended to; here positions before the stream start are masked out, which needs the
query itself in its window.) The mask values per window slot are the reference's. Keys and values are
projected from [cache of earlier layer inputs ; current block], trimmed to the current span window L, so
time and memory follow the learned span instead of the maximum span S.

Logits for query i and window slot j (key at distance L-1-j):
    (q_i . k_{i+j} + q_i . p_j) / sqrt(d_h)
where k indexes [L-1 cached inputs ; M block inputs] (query i sits at L-1+i) and p is the last L columns
of one (d_h, S) table of position keys shared by every layer and head. Content logits are computed as a
(M, M+L-1) product and shifted into (M, L) windows by the "skew" trick (reading the
product with a row stride of M+L: what padding each row and reshaping does, without the copy); the weights
are shifted back the same way to multiply the values.

Persistent memory (all-attention, Sukhbaatar et al. 2019): N learned key/value vectors per head, joined to
the window under one softmax; the span mask applies to the window part only, then both parts are
renormalised together.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.modules.attention.adaptive_span import renormalise


def _band(x: Tensor, rows: int, length: int, width: int) -> Tensor:
    """The (..., rows, length) strided view of a contiguous (..., rows, width) tensor whose row i starts
    at column i: flat index i * (width + 1) + j, i.e. the pad-and-reshape trick without the padding copy."""
    return x.as_strided((*x.shape[:-2], rows, length), (*x.stride()[:-2], width + 1, 1), x.storage_offset())


def unskew(x: Tensor, length: int) -> Tensor:
    """(..., M, M+L-1) absolute key positions -> (..., M, L) windows: out[i, j] = x[i, i+j] (a view)."""
    x = x.contiguous()
    return _band(x, x.size(-2), length, x.size(-1))


def skew(x: Tensor) -> Tensor:
    """(..., M, L) windows -> (..., M, M+L-1) absolute key positions, zeros outside each window."""
    m, length = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], m, m + length - 1)
    _band(out, m, length, m + length - 1).copy_(x)
    return out


class PersistentMemory(nn.Module):
    """N trainable key and value vectors per head, stored rescaled as in the reference.

    Keys are stored as randn / sqrt(d_h) and used times sqrt(d_h); values stored as randn / sqrt(N) and used
    times sqrt(N): a step on a stored tensor moves the used vectors sqrt(d_h) (sqrt(N)) times as far, which
    sets their effective learning rate relative to the other weights.
    """

    def __init__(self, n_heads: int, head_dim: int, size: int):
        super().__init__()
        self.size, self.head_dim = size, head_dim
        self.keys = nn.Parameter(torch.randn(n_heads, size, head_dim) / math.sqrt(head_dim))
        self.values = nn.Parameter(torch.randn(n_heads, size, head_dim) / math.sqrt(size))

    def logits(self, q: Tensor) -> Tensor:
        """q . key for every persistent key: (B, H, M, d_h) -> (B, H, M, N) (q comes scaled)."""
        return q @ (self.keys * math.sqrt(self.head_dim)).transpose(-1, -2)

    def read(self, weights: Tensor) -> Tensor:
        """Weighted sum of the persistent values: (B, H, M, N) -> (B, H, M, d_h)."""
        return weights @ (self.values * math.sqrt(self.size))


class StreamInputs(NamedTuple):
    """What a decoder LM with relative positions gives each layer's attention besides the block: the layer's
    carried cache of earlier inputs (B, C, D), C >= 0, and the position keys (d_h, S) all layers share."""

    memory: Tensor
    position_keys: Tensor


class AttentionOutput(NamedTuple):
    out: Tensor  # (B, M, D)
    span_cost: Optional[Tensor]  # the layer's span L1 term (mean z), None without an adaptive span
    window: int  # L, the number of keys each query looked at


class RelativeAttention(nn.Module):
    """Multi-head cached attention over the last `max_span` positions (fewer with an adaptive span).

    `span` is an AdaptiveMask or DynamicSpanMask (None: a fixed hard window of S keys). `trim=False`
    disables trimming (the window is always S), for tests and benchmarks; results are unchanged.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        max_span: int,
        dropout: float = 0.0,
        span: Optional[nn.Module] = None,
        n_persistent: int = 0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.max_span, self.dropout, self.trim = max_span, dropout, True
        # the reference's layout: no bias in any projection
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.span = span
        self.persistent = PersistentMemory(n_heads, self.head_dim, n_persistent) if n_persistent > 0 else None

    def _split(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, d_h)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def window_inputs(self, h: Tensor, cache: Tensor, window: int) -> tuple[Tensor, int]:
        """[last `window - 1` cached inputs ; block], left-padded with zeros when the cache is shorter
        (the farthest key of the first query is window - 1 positions back).

        Returns the (B, window - 1 + M, D) inputs and how many leading positions are padding (missing keys).
        """
        past = window - 1
        missing = max(0, past - cache.size(1))
        parts = [cache[:, cache.size(1) - past + missing :], h]
        if missing:
            parts.insert(0, h.new_zeros(h.size(0), missing, h.size(2)))
        return torch.cat(parts, dim=1), missing

    def forward(self, h: Tensor, cache: Tensor, key_pe: Tensor) -> AttentionOutput:
        """h: (B, M, D) current block; cache: (B, C, D) earlier inputs of this layer (detached, any C >= 0,
        only the last window - 1 are read);
        key_pe: (d_h, S) shared position keys, column S-1-x for distance x."""
        z, window = self.span_window(h)
        inputs, missing = self.window_inputs(h, cache, window)

        q = self._split(self.q_proj(h)) / math.sqrt(self.head_dim)  # scale the small tensor, not the logits
        k, v = self._split(self.k_proj(inputs)), self._split(self.v_proj(inputs))
        return self.attend_window(h, q, k, v, key_pe, window, missing, z)

    def span_window(self, h: Tensor) -> tuple[Optional[Tensor], int]:
        """The spans z of block `h` (None without a span) and the window L of keys each query looks at."""
        z = self.span.spans(h) if self.span is not None else None
        window = self.span.window_length(z) if (self.span is not None and self.trim) else self.max_span
        return z, window

    def attend_window(
        self,
        h: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_pe: Tensor,
        window: int,
        missing: int,
        z: Optional[Tensor],
    ) -> AttentionOutput:
        """Attention of the block's scaled queries q (B, H, M, d_h) over keys and values (B, H, window - 1 + M,
        d_h) of [the window's earlier positions ; the block], whose first `missing` are padding."""
        m = h.size(1)
        logits = unskew(q @ k.transpose(-1, -2), window) + q @ key_pe[:, self.max_span - window :]
        if missing:
            # slot j of query i reads input i+j; inputs before `missing` are padding
            slots = torch.arange(m, device=h.device)[:, None] + torch.arange(window, device=h.device)
            logits = logits.masked_fill(slots < missing, float("-inf"))

        pers_w: Optional[Tensor] = None
        # weights in (at least) float32 even under autocast: the span mask and renormalisation follow
        weight_dtype = torch.promote_types(logits.dtype, torch.float32)
        if self.persistent is not None:
            joint = torch.cat([logits, self.persistent.logits(q)], dim=-1).softmax(dim=-1, dtype=weight_dtype)
            ctx_w, pers_w = joint[..., :window], joint[..., window:]
        else:
            ctx_w = logits.softmax(dim=-1, dtype=weight_dtype)
        if self.span is not None:
            ctx_w, pers_w = renormalise(self.span.apply(ctx_w, z), pers_w)

        ctx_w = F.dropout(ctx_w, self.dropout, self.training)
        heads = skew(ctx_w) @ v
        if pers_w is not None:
            heads = heads + self.persistent.read(F.dropout(pers_w, self.dropout, self.training))
        out = self.combine_heads(heads, h)
        span_cost = self.span.span_loss(z) if self.span is not None else None
        return AttentionOutput(out, span_cost, window)

    def combine_heads(self, heads: Tensor, h: Tensor) -> Tensor:
        """(B, H, M, d_h) -> (B, M, D) through the output projection. `h` is the block input, for variants
        that reweight the heads from it (MAE)."""
        return self.out_proj(heads.transpose(1, 2).reshape(h.size(0), h.size(1), self.d_model))
