"""Contiguous streams of a token array: streamed training blocks and streamed (cached) scoring.

Training (Sukhbaatar et al. 2019, facebookresearch/adaptive-span): the split is cut into `n_streams`
contiguous streams of equal length (the global batch: batch_size * world_size rows, each rank reading its
own rows); batch i of an epoch holds block i of every stream, so a model that carries a cache sees each
stream in order. Epoch 1 starts the streams at offset 0; later epochs at an offset drawn from (seed, epoch)
in [0, block), as the reference randomises its offset when it wraps around (its cache is reset there too).

Scoring: the split is cut into `n_streams` contiguous sub-streams (8 in the papers), read in
non-overlapping blocks with the cache carried; every target of the split is scored exactly once (the first
(n_targets mod n_streams) sub-streams hold one target more; the last block is padded and masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from toolkit.errors import ConfigError

IGNORE = -100  # target id of padded positions (F.cross_entropy's default ignore_index)

Gather = Callable[[np.ndarray, int], np.ndarray]
"""(starts (R,), length) -> int64 rows (R, length) of a token stream: how a task reads its (memory-mapped) split."""


def array_gather(data: np.ndarray) -> Gather:
    """Rows of `data` itself (a char split: the stream is the array)."""
    return lambda starts, length: np.asarray(data[starts[:, None] + np.arange(length)], dtype=np.int64)


@dataclass(frozen=True)
class StreamLayout:
    """`n_streams` contiguous streams of `length` targets each, read in blocks of `block` tokens."""

    n_streams: int  # streams in the global batch (batch_size * world_size)
    length: int  # targets per stream: stream s reads inputs [s*length, (s+1)*length) of the split
    block: int  # tokens per block (task.tokens_per_sample)
    seed: int  # the run's seed (epoch offsets)

    @classmethod
    def build(cls, n_tokens: int, n_streams: int, block: int, seed: int, where: str) -> "StreamLayout":
        """The layout of a split of `n_tokens`; `where` names the data in the error."""
        length = (n_tokens - 1) // n_streams
        if length < 2 * block:
            raise ConfigError(
                f"task.mode=stream: {n_streams} streams of blocks of {block} need at least "
                f"{2 * block * n_streams + 1} training tokens, {where} has {n_tokens} "
                "(lower task.batch_size or task.tokens_per_sample)"
            )
        return cls(n_streams, length, block, seed)

    def offset(self, epoch: int) -> int:
        """Where the streams start reading in this epoch: 0 in epoch 1, then drawn from (seed, epoch)."""
        if epoch <= 1:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 0x5743]).integers(self.block))

    def blocks(self, epoch: int) -> int:
        """Blocks per stream in this epoch (batches per epoch)."""
        return (self.length - self.offset(epoch)) // self.block

    def batch(self, gather: Gather, epoch: int, index: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `index` of the streams in `rows`: inputs and next-token targets, (rows, block) int64."""
        starts = np.arange(self.n_streams)[rows] * self.length + self.offset(epoch) + index * self.block
        chunk = torch.from_numpy(gather(starts, self.block + 1))
        return chunk[:, :-1], chunk[:, 1:]


def substream_lengths(n_targets: int, n_streams: int) -> np.ndarray:
    """Targets per sub-stream: as equal as possible, the first ones one longer; all add up to n_targets."""
    base, extra = divmod(n_targets, n_streams)
    return base + (np.arange(n_streams) < extra).astype(np.int64)


@torch.no_grad()
def score_substreams(
    model: Any,
    tokens: np.ndarray,
    n_streams: int,
    block: int,
    device: torch.device | str = "cpu",
    max_tokens: Optional[int] = None,
    skip_target: Optional[int] = None,
    per_token: Optional[np.ndarray] = None,
) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over every target of `tokens` and their number, read as sub-streams.

    `model(inputs, cache)` must return (logits, aux, new_cache) and `model.init_cache(batch)` an empty
    cache (a decoder LM with relative positions, e.g. streaming_lm); a model that `scores_own_output`
    (adaptive softmax) returns hidden states instead of logits and scores them itself. Targets equal to `skip_target` (e.g. <eos>) are
    read as context but not scored. `per_token` (float64, one entry per target) receives each scored NLL.
    """
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_targets = data.numel() - 1
    n_streams = max(1, min(n_streams, n_targets))
    lengths = substream_lengths(n_targets, n_streams)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    longest = int(lengths.max())
    lengths_t = torch.from_numpy(lengths)[:, None]
    cache = model.init_cache(n_streams)
    total, count = 0.0, 0
    for pos in tqdm(range(0, longest, block), desc="streamed scoring", unit="block", disable=None, leave=False):
        steps = torch.arange(pos, min(pos + block, longest))
        # positions past a shorter sub-stream's end read its neighbour's tokens; their targets are masked
        index = (torch.from_numpy(starts)[:, None] + steps).clamp(max=n_targets - 1)
        targets = data[index + 1].masked_fill(steps >= lengths_t, IGNORE)
        if skip_target is not None:
            targets = targets.masked_fill(targets == skip_target, IGNORE)
        output, _, cache = model(data[index].to(device), cache)
        targets = targets.to(device)
        scored = targets != IGNORE
        token_nll: Optional[Tensor] = None
        if model.scores_own_output:
            token_nll = model.output_nll(output[scored], targets[scored]).double()
            nll = token_nll.sum()
        else:
            # the sum as one float32 reduction, as it always was (the recorded bpc stay bit-identical)
            nll = F.cross_entropy(output.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum")
            if per_token is not None:
                token_nll = F.cross_entropy(output.float()[scored], targets[scored], reduction="none").double()
        if per_token is not None:
            per_token[index[scored.cpu()].numpy()] = token_nll.cpu().numpy()
        total += float(nll)
        count += int(scored.sum())
    return total, count
