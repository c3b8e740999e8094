"""Multi-head attention on F.scaled_dot_product_attention, shared by every model.

Tensors are batch-first: (batch, time, d_model). A key padding mask is (batch, src_len) with True at padding.
The computation is split into `project_heads` / `attend` / `combine_heads` so that variants (MAE's per-head
reweighting, for one) override only the step they change.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Cache = Dict[str, Tensor]


class MultiheadAttention(nn.Module):
    """Standard scaled dot-product multi-head attention (Vaswani et al. 2017).

    `cache` (a dict owned by the caller) enables incremental decoding: for self-attention the keys and
    values of earlier steps are appended; with `static_kv=True` (encoder-decoder attention) they are
    computed once from `key` and reused.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
        nn.init.xavier_uniform_(self.out_proj.weight)

    def split(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, Dh)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def project_heads(
        self, query: Tensor, key: Tensor, cache: Optional[Cache], static_kv: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        q = self.split(self.q_proj(query))
        if cache is not None and static_kv and "k" in cache:
            return q, cache["k"], cache["v"]
        k, v = self.split(self.k_proj(key)), self.split(self.v_proj(key))
        if cache is not None:
            if not static_kv and "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        return q, k, v

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], causal: bool
    ) -> Tensor:
        """Per-head outputs (B, H, T, Dh) before the output projection."""
        t, s = q.size(2), k.size(2)
        dropout = self.dropout if self.training else 0.0
        if causal and key_padding_mask is None and t == s:
            # the fused kernels' fast path
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # SDPA: True = may attend
        if causal and t > 1:
            # queries are the last t of s positions (s > t when a cache holds earlier steps)
            allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
            mask = allowed if mask is None else mask & allowed
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)

    def combine_heads(self, heads: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """(B, H, T, Dh) -> (B, T, D) through the output projection."""
        b, _, t, _ = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(b, t, self.d_model))

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        *,
        key_padding_mask: Optional[Tensor] = None,
        causal: bool = False,
        cache: Optional[Cache] = None,
        static_kv: bool = False,
        context: Optional[Tensor] = None,
    ) -> Tensor:
        """`context` is the layer input some variants condition on (MAE's gate); plain MHA ignores it."""
        key = query if key is None else key
        q, k, v = self.project_heads(query, key, cache, static_kv)
        heads = self.attend(q, k, v, key_padding_mask, causal)
        return self.combine_heads(heads, context)


def reorder_cache(cache: Cache, order: Tensor) -> None:
    """Select batch rows of every cached tensor in place (beam search reordering)."""
    for name, value in cache.items():
        cache[name] = value.index_select(0, order)
