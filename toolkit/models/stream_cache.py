"""The carried stream cache of a decoder LM with relative positions (the streamed configuration).

The corpus is read as contiguous streams in blocks; every layer keeps a cache of its own inputs at the most
recent positions (detached), and the next block attends to them (toolkit.modules.attention.span_attention).
`StreamCache` holds what the model contract asks of a model that `carries_stream_cache`
(toolkit.models.base): the cache of the training streams, which the trainer's `forward(tokens, target=...,
reset=...)` carries from block to block, `stream_state`/`load_stream_state` for checkpoints, `init_cache`
and `cache_length`.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

Cache = List[Tensor]  # one (B, C_l, D) tensor of layer inputs per layer


def keep_last(cache: Tensor, h: Tensor, length: int) -> Tensor:
    """The last `length` positions of [cache ; h], detached (the next block's cache)."""
    if length <= h.size(1):
        return h[:, h.size(1) - length :].detach()
    older = cache[:, max(0, cache.size(1) - (length - h.size(1))) :]
    return torch.cat([older, h], dim=1).detach()


class StreamCache:
    """Per-layer caches of a model's streams. `max_span` (S, the farthest a query looks) and `margin` (cached
    positions kept beyond the current window) bound what is kept."""

    def __init__(self, n_layers: int, d_model: int, max_span: int, margin: int):
        self.n_layers, self.d_model, self.max_span, self.margin = n_layers, d_model, max_span, margin
        self.training_cache: Optional[Cache] = None  # the training streams' (trainer contract), not a buffer

    def length(self, window: int) -> int:
        """Inputs to keep for the next block: a window of L keys reaches L - 1 positions back, plus the
        margin for spans that grow at the next optimizer step; never more than S - 1."""
        return min(self.max_span, window + self.margin) - 1

    def empty(self, batch: int, like: Tensor) -> Cache:
        """Empty caches (nothing before the start of a stream; such keys are masked, not zeros)."""
        return [like.new_zeros(batch, 0, self.d_model) for _ in range(self.n_layers)]

    def check(self, cache: Cache) -> None:
        if len(cache) != self.n_layers:
            raise ValueError(f"cache has {len(cache)} entries for {self.n_layers} layers")

    def carried(self, batch: int, reset: Optional[bool]) -> Optional[Cache]:
        """The training streams' cache for the next block: none at the first block of an epoch (`reset=True`)
        or for independent windows (`reset=None`)."""
        carried = self.training_cache if reset is not None and not reset else None
        if carried is not None and carried[0].size(0) != batch:
            raise ValueError(f"the carried cache holds {carried[0].size(0)} streams, the batch {batch}")
        return carried

    def state(self) -> Optional[Cache]:
        """The carried training cache (CPU copies), or None before the first stream block."""
        if self.training_cache is None:
            return None
        return [c.detach().cpu().clone() for c in self.training_cache]

    def load(self, state: Optional[Cache], device: torch.device) -> None:
        """Restore a cache from `state` (None: start the next block without one)."""
        if state is None:
            self.training_cache = None
            return
        if len(state) != self.n_layers:
            raise ValueError(f"stream cache has {len(state)} entries for {self.n_layers} layers")
        self.training_cache = [c.to(device) for c in state]
