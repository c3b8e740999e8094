"""MAE's gate network, its pooled input, the expert/head membership matrix and gate statistics.

Paper: "A Mixture of h-1 Heads is Better than h Heads" (Peng et al., ACL 2020). An expert is a subset of
h - k heads; the gate gives a softmax over experts from the mean of the layer input:
g(x) = softmax(W2 tanh(W1 tanh(mean(x)))). Padding never enters the mean. A causal gate uses the running mean
over the prefix (one gate per position) and carries its running sum and count in the decoder's cache dict.
"""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import Tensor, nn

from toolkit.modules.attention.base import Cache

# Every gate parameter lives under a submodule named `mae_gate`: the trainer's block coordinate descent
# selects them with this regex (matched with re.search against names from model.named_parameters()).
GATE_PARAM_PATTERN = r"(^|\.)mae_gate\."

# Keys this module adds to an attention cache; all tensors are batch-first so reorder_cache works.
SUM_KEY, COUNT_KEY, EXPERT_KEY = "mae_sum", "mae_count", "mae_expert"


def expert_membership(n_heads: int, drop: int) -> Tensor:
    """(n_experts, n_heads) 0/1 matrix: row j marks the heads of expert j.

    Experts are all subsets of n_heads - drop heads, in itertools.combinations order of the dropped heads,
    so with drop=1 expert j is "every head but head j".
    """
    dropped = torch.tensor(list(itertools.combinations(range(n_heads), drop)), dtype=torch.long)
    membership = torch.ones(dropped.size(0), n_heads)
    return membership.scatter_(1, dropped, 0.0)


def _accumulation_dtype(x: Tensor) -> Tensor:
    """Half precision goes to float32 (long prefix sums, softmax); float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked_mean(x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Mean over time of (B, T, D), padding (True in (B, T)) excluded -> (B, D), at least float32."""
    x = _accumulation_dtype(x)
    if padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def prefix_mean(x: Tensor, padding_mask: Optional[Tensor], cache: Optional[Cache]) -> Tensor:
    """Running mean over each prefix of (B, T, D), padding excluded -> (B, T, D), at least float32.

    With a cache, the sums and counts of earlier steps are read from it and the totals written back, so
    step-by-step decoding sees exactly the prefixes that full recomputation sees.
    """
    x = _accumulation_dtype(x)
    if padding_mask is None:
        sums = torch.cumsum(x, dim=1)
        counts = torch.arange(1, x.size(1) + 1, dtype=x.dtype, device=x.device).expand(x.size(0), -1)
    else:
        keep = (~padding_mask).to(x.dtype)
        sums, counts = torch.cumsum(x * keep.unsqueeze(-1), dim=1), torch.cumsum(keep, dim=1)
    counts = counts.unsqueeze(-1)
    if cache is not None:
        if SUM_KEY in cache:
            sums = sums + cache[SUM_KEY].unsqueeze(1)
            counts = counts + cache[COUNT_KEY].unsqueeze(1)
        # copies: a view would keep the whole (B, T, D) prefix-sum tensor alive in the cache
        cache[SUM_KEY], cache[COUNT_KEY] = sums[:, -1].clone(), counts[:, -1].clone()
    return sums / counts.clamp(min=1.0)  # a prefix of only padding has mean 0


class MAEGate(nn.Module):
    """Two-layer tanh MLP from a pooled layer input to a softmax over experts."""

    def __init__(self, d_model: int, hidden: int, n_experts: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, n_experts)

    def forward(self, pooled: Tensor) -> Tensor:
        """(..., D) pooled input -> (..., n_experts) probabilities, at least float32 (a small tensor)."""
        pooled = pooled.to(self.fc1.weight.dtype)
        logits = self.fc2(torch.tanh(self.fc1(torch.tanh(pooled))))
        return torch.softmax(_accumulation_dtype(logits), dim=-1)


def _rows(g: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Flatten gates to (rows, E), keeping only the rows whose position is not padding."""
    rows = g.detach().float().reshape(-1, g.size(-1))
    if padding_mask is None or g.dim() == 2:  # a per-sequence gate has no padded rows
        return rows
    return rows[~padding_mask.reshape(-1)]


def gate_entropy(g: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """Mean entropy (nats) of gate distributions (..., E); 0 = one expert, log(E) = uniform.

    padding_mask (B, T), True at padding, drops padded rows of a per-position gate (B, T, E).
    """
    rows = _rows(g, padding_mask)
    return -(rows * torch.log(rows.clamp(min=torch.finfo(rows.dtype).tiny))).sum(-1).mean()


def expert_usage(g: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
    """Mean gate weight of each expert over all rows -> (E,), summing to 1."""
    return _rows(g, padding_mask).mean(dim=0)
