"""Multi-head attention on F.scaled_dot_product_attention, shared by every model.

Tensors are batch-first: (batch, time, d_model). A key padding mask is (batch, src_len) with True at padding.
The computation is split into `project_heads` / `attend` / `combine_heads` so that variants (MAE's per-head
reweighting, for one) override only the step they change.

The query, key and value projections are one stacked (3 d_model x d_model) weight, `qkv_proj`: self-attention
computes all three with one matmul, encoder-decoder attention its query with the first block and keys and values
of the source with the other two (one matmul). Checkpoints that hold them as `q_proj`/`k_proj`/`v_proj` load
(a load_state_dict pre-hook stacks them).

With rotary positions (`use_rotary`) self-attention rotates its queries and keys to their positions, counted
from the steps already in its cache, before they are cached.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.modules.rotary import RotaryPositions
from toolkit.modules.stacked_linear import StackedLinear

Cache = Dict[str, Tensor]

# The projections `qkv_proj` stacks, in order, as checkpoints before the stacking named them.
SEPARATE_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
# Cache entries of keys/values selected for the next step into buffers with its time slot still free
GROWN = {"k": "k_grown", "v": "v_grown"}


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
        self.qkv_proj = StackedLinear(d_model, d_model, 3, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        for weight in self.qkv_proj.weight.chunk(3):  # each d x d block as the separate layer it stands for
            nn.init.xavier_uniform_(weight, gain=2**-0.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        self.rotary: Optional[RotaryPositions] = None
        self._register_load_state_dict_pre_hook(stack_separate_projections)

    def use_rotary(self, rotary: RotaryPositions) -> None:
        """Rotate self-attention's queries and keys by `rotary` (shared by the layers; nothing is saved)."""
        self.rotary = rotary

    def split(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, Dh)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def split_stacked(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(B, T, parts * D) -> `parts` views (B, H, T, Dh)."""
        b, t, _ = x.shape
        return x.view(b, t, parts, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def rotated_heads(self, qkv: Tensor, past: int) -> tuple[Tensor, Tensor, Tensor]:
        """`split_stacked(qkv, 3)` with queries and keys rotated to positions past .. past + T - 1 (both at once)."""
        assert self.rotary is not None
        b, t, _ = qkv.shape
        parts = qkv.view(b, t, 3, self.n_heads, self.head_dim)
        q, k = self.rotary(parts[:, :, :2], past, time_dim=1).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, parts[:, :, 2].transpose(1, 2)

    def _projection(self, x: Tensor, first: int, parts: int) -> Tensor:
        """Blocks first..first+parts-1 of the stacked q/k/v projection applied to x (one matmul)."""
        rows = slice(first * self.d_model, (first + parts) * self.d_model)
        bias = self.qkv_proj.bias
        return F.linear(x, self.qkv_proj.weight[rows], None if bias is None else bias[rows])

    def key_values(self, key: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, S, Dh) of `key` (B, S, D), in one matmul."""
        k, v = self.split_stacked(self._projection(key, 1, 2), 2)
        return k, v

    def cache_static_kv(self, key: Tensor, cache: Cache) -> None:
        """Fill an encoder-decoder attention cache before the first step. `key` may hold one row per sentence
        where the decoder has several (its beams): beam search then selects the cached rows for them."""
        cache["k"], cache["v"] = self.key_values(key)

    def project_heads(
        self, query: Tensor, key: Tensor, cache: Optional[Cache], static_kv: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        if key is query and not static_kv:  # self-attention: q, k and v in one matmul
            qkv = self.qkv_proj(query)
            if self.rotary is None:
                q, k, v = self.split_stacked(qkv, 3)
            else:
                q, k, v = self.rotated_heads(qkv, _cached_steps(cache))
        else:
            q = self.split(self._projection(query, 0, 1))
            if cache is not None and static_kv and "k" in cache:
                return q, cache["k"], cache["v"]
            k, v = self.key_values(key)
        if cache is not None:
            if not static_kv and GROWN["k"] in cache:
                k, v = _fill_free_slot(cache.pop(GROWN["k"]), k), _fill_free_slot(cache.pop(GROWN["v"]), v)
            elif not static_kv and "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], causal: bool) -> Tensor:
        """Per-head outputs (B, H, T, Dh) before the output projection.

        Keys with fewer rows than the queries (beam search sharing a source among a sentence's beams): key row
        i serves query rows i*g .. i*g+g-1 (g = query rows / key rows), whose queries attend to it together as
        one longer query sequence (non-causal attention only)."""
        rows, sources = q.size(0), k.size(0)
        if sources == rows:
            return self._attend(q, k, v, key_padding_mask, causal)
        if causal or rows % sources:
            raise ValueError(
                f"attention: {rows} query rows cannot share {sources} key rows"
                f"{' in causal attention' if causal else ''}"
            )
        _, h, t, dh = q.shape
        group = q.view(sources, rows // sources, h, t, dh).transpose(1, 2).reshape(sources, h, -1, dh)
        out = self._attend(group, k, v, key_padding_mask, False)
        return out.view(sources, h, rows // sources, t, dh).transpose(1, 2).reshape(rows, h, t, dh)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Optional[Tensor], causal: bool) -> Tensor:
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


def stack_separate_projections(state_dict: Dict[str, Tensor], prefix: str, *_: object) -> None:
    """load_state_dict pre-hook: a checkpoint's separate q/k/v projections become the stacked `qkv_proj`."""
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{name}.{kind}" for name in SEPARATE_PROJECTIONS]
        if all(key in state_dict for key in keys):
            state_dict[f"{prefix}qkv_proj.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])


def separate_projection_sources(model: nn.Module) -> Dict[str, Tuple[str, ...]]:
    """Stacked parameter name -> the separate-projection names it was saved under, in block order, for every
    MultiheadAttention of `model` (names as in model.state_dict())."""
    sources = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            prefix = f"{name}." if name else ""
            for kind, param in (("weight", module.qkv_proj.weight), ("bias", module.qkv_proj.bias)):
                if param is not None:
                    sources[f"{prefix}qkv_proj.{kind}"] = tuple(f"{prefix}{p}.{kind}" for p in SEPARATE_PROJECTIONS)
    return sources


def with_stacked_projections(model: nn.Module, weights: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A copy of the state dict `weights` in which separate q/k/v projections are stacked as `model` holds
    them (what load_state_dict does through the pre-hook); a state dict saved stacked comes back unchanged."""
    out = dict(weights)
    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            stack_separate_projections(out, f"{name}." if name else "")
    return out


def _cached_steps(cache: Optional[Cache]) -> int:
    """Time steps a self-attention cache holds (a grown buffer's free last slot is not one)."""
    if cache is None:
        return 0
    if GROWN["k"] in cache:
        return cache[GROWN["k"]].size(2) - 1
    return cache["k"].size(2) if "k" in cache else 0


def _fill_free_slot(grown: Tensor, new: Tensor) -> Tensor:
    """Keys or values of the past in a buffer with one free last time slot (reorder_cache(grow=True)) + `new`."""
    if new.size(2) != 1:  # several steps at once: the free slot does not fit them
        return torch.cat([grown[:, :, :-1], new], dim=2)
    grown[:, :, -1:] = new
    return grown


def reorder_cache(cache: Cache, order: Tensor, grow: bool = False) -> None:
    """Select batch rows of every cached tensor in place (beam search reordering).

    grow=True (self-attention caches, which the next step extends): keys and values are selected into buffers
    one time step longer, whose free last slot the next step fills in place, so that the cached past is copied
    once per step (selected and extended together) instead of twice."""
    for name in [n for n in cache if n not in ("k", "v", GROWN["k"], GROWN["v"])]:
        cache[name] = cache[name].index_select(0, order)
    for name, grown_name in GROWN.items():
        if grown_name in cache:  # selected before, not yet extended: its free slot holds nothing
            past = cache.pop(grown_name)[:, :, :-1]
        elif name in cache:
            past = cache.pop(name)
        else:
            continue
        if not grow or past.requires_grad:  # (out= records no gradient)
            cache[name] = past.index_select(0, order)
            continue
        buffer = past.new_empty(order.numel(), past.size(1), past.size(2) + 1, past.size(3))
        torch.index_select(past, 0, order, out=buffer[:, :, :-1])
        cache[grown_name] = buffer
