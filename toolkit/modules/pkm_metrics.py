"""Memory usage metrics of a product-key memory (paper 4, section 4.5).

`usage`: fraction of the |K| slots selected at least once over the evaluated data.
`kl_uniform`: KL(p || uniform) where p is the average slot-weight distribution: the softmax weights each slot
received, summed over every read (tokens and heads) and normalised. 0 when every slot gets equal weight,
log|K| when all the weight goes to one slot.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor


class MemoryUsageTracker:
    """Accumulates per-slot selection counts and summed weights (float64) with torch.bincount.

    Under DDP, all-reduce `counts` and `weight_sums` (sum) before `report()` to score the whole data.
    """

    def __init__(self, mem_size: int):
        self.mem_size = mem_size
        # on the host whatever device the model is built on: reads are counted there (update)
        self.counts = torch.zeros(mem_size, dtype=torch.float64, device="cpu")
        self.weight_sums = torch.zeros(mem_size, dtype=torch.float64, device="cpu")

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.counts.zero_()
        self.weight_sums.zero_()

    def update(self, indices: Tensor, weights: Tensor) -> None:
        """Add one read: slot ids and their weights of the same shape (e.g. (N, heads, k))."""
        idx = indices.detach().reshape(-1).to(device="cpu", dtype=torch.long)
        w = weights.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        self.counts += torch.bincount(idx, minlength=self.mem_size).to(torch.float64)
        self.weight_sums += torch.bincount(idx, weights=w, minlength=self.mem_size)

    def update_from(self, memory) -> None:
        """Add the last read of a ProductKeyMemory that has `track_usage` on (no-op before its first read)."""
        if memory.last_indices is not None:
            self.update(memory.last_indices, memory.last_weights)

    @property
    def usage(self) -> float:
        """Fraction of slots selected at least once."""
        return float((self.counts > 0).double().mean())

    @property
    def kl_uniform(self) -> float:
        """KL(average slot-weight distribution || uniform over the slots), in nats; nan before any read."""
        total = self.weight_sums.sum()
        if total <= 0:
            return float("nan")
        p = self.weight_sums / total
        nz = p > 0  # 0 * log 0 = 0
        return float((p[nz] * (p[nz].log() + math.log(self.mem_size))).sum())

    def report(self, prefix: str = "pkm") -> Dict[str, float]:
        """{'<prefix>_usage': ..., '<prefix>_kl_uniform': ...} for logs and tk-eval output."""
        return {f"{prefix}_usage": self.usage, f"{prefix}_kl_uniform": self.kl_uniform}
