"""Product-key memory layer (Lample et al., "Large Memory Layers with Product Keys", NeurIPS 2019).

A token's query is compared with |K| = n^2 keys without scoring all of them: every key is the concatenation
of one sub-key from C1 and one from C2 (n sub-keys each), so the exact top-k over the n^2 full keys lies among
the k*k sums of the top-k of each half. Cost per token grows with heads * (n * key_dim + k^2 + k * v_dim),
not with |K|.

Padding: BatchNorm statistics must not see pad rows, so with a padding mask the whole memory runs on the
non-padded rows only (gathered with a boolean index) and pad positions get a zero output. This is cheaper than
masking the statistics and keeps BatchNorm exact; it also keeps pad tokens out of the usage metrics.

Values live in `memory_values` (an nn.EmbeddingBag); `PKM_VALUES_PATTERN` selects them for their own
optimizer (see `pkm_param_groups`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError

# Matches the value table of every ProductKeyMemory in a model, whatever its prefix.
PKM_VALUES_PATTERN = r"(^|\.)memory_values\.weight$"


@dataclass
class PKMConfig:
    """Hyper-parameters of one product-key memory layer (paper defaults)."""

    mem_size: int = 512**2
    """Number of memory slots |K|; a perfect square n^2 (n sub-keys per half)."""
    key_dim: int = 256
    """Dimension of a full key / of each head's query; even (split into two halves)."""
    heads: int = 4
    """Memory heads: independent queries and sub-key sets; their reads are summed."""
    knn: int = 32
    """k: slots read per head (top-k per half, then top-k of the k*k sums); at most sqrt(mem_size)."""
    query_layers: int = 1
    """Linear layers in the query network; layers beyond one are hidden Linear(d_in, d_in)+ReLU before it."""
    query_batchnorm: bool = True
    """BatchNorm1d on the query (key to good slot usage in the paper); pad rows never enter its statistics."""
    input_dropout: float = 0.0
    """Dropout on the layer input before the query network."""
    query_dropout: float = 0.0
    """Dropout on the (normalised) query."""
    value_dropout: float = 0.0
    """Dropout on the memory read (before the optional output projection)."""
    sparse: bool = False
    """Sparse gradients for the value table (EmbeddingBag(sparse=True)); pair with torch.optim.SparseAdam."""
    value_dim: Optional[int] = None
    """Value dimension; None = d_out. When set and != d_out, a Linear(value_dim, d_out) follows the read."""


def validate_pkm_config(cfg: PKMConfig, prefix: str = "pkm") -> int:
    """Check `cfg`; return n = sqrt(mem_size). Raises ConfigError naming the bad key."""
    n = math.isqrt(cfg.mem_size) if cfg.mem_size > 0 else 0
    if n < 1 or n * n != cfg.mem_size:
        raise ConfigError(f"{prefix}.mem_size={cfg.mem_size} must be a perfect square (e.g. 512**2=262144)")
    if cfg.key_dim < 2 or cfg.key_dim % 2:
        raise ConfigError(f"{prefix}.key_dim={cfg.key_dim} must be a positive even number")
    if cfg.heads < 1:
        raise ConfigError(f"{prefix}.heads={cfg.heads} must be >= 1")
    if not 1 <= cfg.knn <= n:
        raise ConfigError(f"{prefix}.knn={cfg.knn} must be in [1, sqrt(mem_size)={n}]")
    if cfg.query_layers < 1:
        raise ConfigError(f"{prefix}.query_layers={cfg.query_layers} must be >= 1")
    if cfg.value_dim is not None and cfg.value_dim < 1:
        raise ConfigError(f"{prefix}.value_dim={cfg.value_dim} must be >= 1 or null")
    for name in ("input_dropout", "query_dropout", "value_dropout"):
        p = getattr(cfg, name)
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{prefix}.{name}={p} must be in [0, 1)")
    return n


def pkm_param_groups(cfg: PKMConfig, lr: float = 1e-3) -> Dict[str, Any]:
    """The optimizer group for PKM values, as the paper trains them.

    Returns {"name", "pattern", "optimizer", "lr", "lr_scheduler"}: `pattern` is a regex over parameter names
    (`PKM_VALUES_PATTERN`) for the trainer's regex parameter groups; the optimizer is Adam at a constant lr
    (1e-3 in the paper), or SparseAdam when `cfg.sparse` (Adam cannot take sparse gradients). Everything else
    (keys, query network, BatchNorm) stays with the model's main optimizer.
    """
    return {
        "name": "pkm_values",
        "pattern": PKM_VALUES_PATTERN,
        "optimizer": "sparse_adam" if cfg.sparse else "adam",
        "lr": lr,
        "lr_scheduler": "constant",
    }


def _uniform_keys(heads: int, n: int, half: int) -> Tensor:
    # nn.Linear-style bound 1/sqrt(fan_in) with fan_in = the sub-key dimension, as in the reference notebook
    bound = 1.0 / math.sqrt(half)
    return torch.empty(heads, 2, n, half).uniform_(-bound, bound)


class ProductKeyMemory(nn.Module):
    """Product-key memory: (B, T, d_in) -> (B, T, d_out), a drop-in replacement for (or addition to) an FFN.

    Set `track_usage = True` to keep the last read's `last_indices` (N, heads, k) and `last_weights`
    (N, heads, k) (detached, non-padded tokens only) for `MemoryUsageTracker`; off, nothing is stored.
    """

    def __init__(self, d_in: int, d_out: int, cfg: PKMConfig):
        super().__init__()
        self.n_keys = validate_pkm_config(cfg)
        self.cfg, self.d_in, self.d_out = cfg, d_in, d_out
        self.heads, self.knn, self.key_dim = cfg.heads, cfg.knn, cfg.key_dim
        self.v_dim = cfg.value_dim or d_out
        hidden = []
        for _ in range(cfg.query_layers - 1):
            hidden += [nn.Linear(d_in, d_in), nn.ReLU()]
        self.query_net = nn.Sequential(*hidden, nn.Linear(d_in, cfg.heads * cfg.key_dim))
        self.query_norm = nn.BatchNorm1d(cfg.heads * cfg.key_dim) if cfg.query_batchnorm else nn.Identity()
        # (heads, 2 halves, n sub-keys, key_dim/2): one batched einsum scores every head and half at once
        self.keys = nn.Parameter(_uniform_keys(cfg.heads, self.n_keys, cfg.key_dim // 2))
        self.memory_values = nn.EmbeddingBag(cfg.mem_size, self.v_dim, mode="sum", sparse=cfg.sparse)
        nn.init.normal_(self.memory_values.weight, mean=0.0, std=self.v_dim**-0.5)
        self.out_proj = nn.Linear(self.v_dim, d_out) if self.v_dim != d_out else nn.Identity()
        self.track_usage = False
        self.last_indices: Optional[Tensor] = None
        self.last_weights: Optional[Tensor] = None

    def query(self, x: Tensor) -> Tensor:
        """(N, d_in) -> normalised per-head queries (N, heads, key_dim)."""
        x = F.dropout(x, self.cfg.input_dropout, self.training)
        q = self.query_norm(self.query_net(x))
        q = F.dropout(q, self.cfg.query_dropout, self.training)
        return q.view(-1, self.heads, self.key_dim)

    def lookup(self, q: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact top-k over the n^2 product keys: (N, H, key_dim) -> scores (N, H, k), slot ids (N, H, k)."""
        n, k = self.n_keys, self.knn
        halves = q.view(q.size(0), self.heads, 2, self.key_dim // 2)
        # scores in float32 even under autocast: the top-k choice among n^2 slots must not hinge on
        # bfloat16 ties (the einsum costs heads * n * key_dim per token, small next to the value read)
        dtype = torch.promote_types(halves.dtype, torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            sub_scores = torch.einsum("nhsd,hskd->nhsk", halves.to(dtype), self.keys.to(dtype))  # (N, H, 2, n)
        top_s, top_i = sub_scores.topk(k, dim=-1)  # (N, H, 2, k)
        (s1, s2), (i1, i2) = top_s.unbind(2), top_i.unbind(2)
        # every pair (a, b) of the two top-k lists scores s1_a + s2_b; choose the best k pairs without
        # autograd (no k*k graph to store or back-propagate), then rebuild their scores from k-sized gathers
        pair = (s1.detach()[..., :, None] + s2.detach()[..., None, :]).flatten(2)  # (N, H, k*k)
        best = pair.topk(k, dim=-1).indices
        a, b = best.div(k, rounding_mode="floor"), best.remainder(k)
        scores = s1.gather(-1, a) + s2.gather(-1, b)  # same float sums as `pair`: order is kept
        return scores, i1.gather(-1, a) * n + i2.gather(-1, b)

    def read(self, x: Tensor) -> Tensor:
        """Memory read for flat tokens: (N, d_in) -> (N, d_out)."""
        scores, indices = self.lookup(self.query(x))
        weights = F.softmax(scores.float(), dim=-1)  # float32 even under autocast
        if self.track_usage:
            self.last_indices, self.last_weights = indices.detach(), weights.detach()
        # one bag per token holding all heads' k slots: EmbeddingBag's sum also sums over heads
        table = self.memory_values.weight
        out = self.memory_values(indices.flatten(1), per_sample_weights=weights.flatten(1).to(table.dtype))
        out = F.dropout(out, self.cfg.value_dropout, self.training)
        return self.out_proj(out)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """x (B, T, d_in), padding_mask (B, T) True at padding -> (B, T, d_out); pad positions are zero."""
        flat = x.reshape(-1, self.d_in)
        if padding_mask is None:
            return self.read(flat).view(*x.shape[:-1], self.d_out)
        keep = ~padding_mask.reshape(-1)
        out = flat.new_zeros(flat.size(0), self.d_out)
        if bool(keep.any()):
            out = out.index_put((keep,), self.read(flat[keep]).to(out.dtype))
        elif self.track_usage:
            self.last_indices = flat.new_zeros(0, self.heads, self.knn, dtype=torch.long)
            self.last_weights = flat.new_zeros(0, self.heads, self.knn, dtype=torch.float32)
        return out.view(*x.shape[:-1], self.d_out)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"mem_size={c.mem_size}, key_dim={c.key_dim}, heads={c.heads}, knn={c.knn}, sparse={c.sparse}"
