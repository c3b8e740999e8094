"""Token-based batching with length bucketing, and batch collation (the translation task deals the batches out to ranks).

`batches_for_epoch` is a pure function of (sizes, limits, seed, epoch): a resumed run recomputes the same
epoch's batches and skips the ones already consumed, which is how iteration resumes exactly.

Per epoch:
1. every example's cost is num_tokens = max(src_len, tgt_len) + size_offset (the eos the collater adds);
2. examples longer than max_source/target_positions or max_tokens are skipped (warning with their count) or
   fail (DataError naming the first one), by `overlong`;
3. the rest are sorted by num_tokens, ties broken by a random permutation drawn from (seed, epoch), so
   batches change composition between epochs but stay length-homogeneous;
4. consecutive runs of the sorted order become batches, each as large as allowed by
   n * max(num_tokens in batch) <= max_tokens (the padded size) and n <= max_sentences;
5. the batch order is shuffled with the same (seed, epoch) generator.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch

from toolkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OVERLONG_POLICIES = ("skip", "fail")


def num_tokens(src_sizes: np.ndarray, tgt_sizes: Optional[np.ndarray], size_offset: int = 1) -> np.ndarray:
    """Per-example padded cost: the longer side plus the tokens the collater appends."""
    sizes = np.asarray(src_sizes, dtype=np.int64)
    if tgt_sizes is not None:
        sizes = np.maximum(sizes, np.asarray(tgt_sizes, dtype=np.int64))
    return sizes + size_offset


def _overlong(
    src: np.ndarray,
    tgt: Optional[np.ndarray],
    cost: np.ndarray,
    max_tokens: int,
    max_source_positions: Optional[int],
    max_target_positions: Optional[int],
    size_offset: int,
) -> tuple[np.ndarray, list[str]]:
    """Mask of examples that cannot be batched, and for each rule a description of its limit."""
    bad = cost > max_tokens
    rules = [(bad.copy(), f"max_tokens={max_tokens}")]
    if max_source_positions is not None:
        over = src + size_offset > max_source_positions
        rules.append((over, f"max_source_positions={max_source_positions}"))
        bad |= over
    if max_target_positions is not None and tgt is not None:
        over = tgt + size_offset > max_target_positions
        rules.append((over, f"max_target_positions={max_target_positions}"))
        bad |= over
    return bad, [name for mask, name in rules if mask.any()]


def batches_for_epoch(
    src_sizes: Sequence[int],
    tgt_sizes: Optional[Sequence[int]],
    max_tokens: int,
    seed: int,
    epoch: int,
    max_sentences: Optional[int] = None,
    max_source_positions: Optional[int] = None,
    max_target_positions: Optional[int] = None,
    overlong: str = "skip",
    size_offset: int = 1,
) -> list[np.ndarray]:
    """The epoch's batches: arrays of example indices, in the order to train on them.

    Sizes are lengths as stored (without eos); `size_offset` tokens per example are added by the collater.
    Every kept example appears in exactly one batch.
    """
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
    if max_sentences is not None and max_sentences < 1:
        raise ConfigError(f"max_sentences must be positive or null, got {max_sentences}")
    if overlong not in OVERLONG_POLICIES:
        raise ConfigError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got '{overlong}'")
    src = np.asarray(src_sizes, dtype=np.int64)
    tgt = None if tgt_sizes is None else np.asarray(tgt_sizes, dtype=np.int64)
    if tgt is not None and len(tgt) != len(src):
        raise DataError(f"{len(src)} source sizes but {len(tgt)} target sizes")
    cost = num_tokens(src, tgt, size_offset)

    bad, limits = _overlong(src, tgt, cost, max_tokens, max_source_positions, max_target_positions, size_offset)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        lengths = f"source {src[first]}" + ("" if tgt is None else f", target {tgt[first]}")
        if overlong == "fail":
            raise DataError(
                f"example {first} is too long ({lengths} tokens, {cost[first]} with eos) for "
                f"{' / '.join(limits)}; raise the limit or set overlong=skip"
            )
        logger.warning(
            "skipping %d of %d examples too long for %s (first: example %d, %s tokens)",
            int(bad.sum()),
            len(src),
            " / ".join(limits),
            first,
            lengths,
        )

    rng = np.random.default_rng([seed, epoch])
    tie_break = rng.permutation(len(src))
    kept = tie_break[~bad[tie_break]]
    order = kept[np.argsort(cost[kept], kind="stable")]
    bounds = _cut(cost[order], max_tokens, max_sentences)
    batches = [order[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
    return [batches[i] for i in rng.permutation(len(batches))]


def _cut(sorted_cost: np.ndarray, max_tokens: int, max_sentences: Optional[int]) -> np.ndarray:
    """Batch boundaries over costs sorted ascending: greedy, each batch as long as its padded size allows.

    Costs are non-decreasing, so a batch's padded size is (its length) * (its last cost) and the largest
    batch from `start` is found with one vectorised comparison over the window that could fit.
    """
    n = len(sorted_cost)
    bounds = [0]
    cap = max_sentences or max_tokens
    start = 0
    while start < n:
        window = sorted_cost[start : start + min(cap, max_tokens // max(int(sorted_cost[start]), 1))]
        fits = np.arange(1, len(window) + 1) * window <= max_tokens
        size = max(int(np.argmin(fits)) if not fits.all() else len(window), 1)
        start += size
        bounds.append(start)
    return np.asarray(bounds)


def _pad_rows(items: list[np.ndarray], pad: int, width: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, width) array of pad with item b written at columns start..start+len-1; returns it and lengths."""
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    out = np.full((len(items), width), pad, dtype=np.int64)
    columns = np.arange(width)
    mask = (columns >= start) & (columns < (lengths + start)[:, None])
    out[mask] = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)  # row-major = item order
    return out, lengths


def collate(
    indices: Sequence[int],
    src_ds: Sequence[np.ndarray],
    tgt_ds: Optional[Sequence[np.ndarray]],
    pad: int,
    eos: int,
    bos: Optional[int] = None,
) -> dict:
    """A training batch from dataset indices (fairseq's conventions, right padding).

    src_tokens          (B, S) source + eos, padded with pad; S = longest source + 1
    src_lengths         (B,) source lengths including eos
    target              (B, T) target + eos, padded with pad
    prev_output_tokens  (B, T) decoder input: start symbol + target (teacher forcing), padded with pad;
                        the start symbol is eos (fairseq's convention) unless `bos` is given
    ntokens             target tokens including eos (the loss normaliser); nsentences; id (B,) indices
    net_input           {src_tokens, src_lengths, prev_output_tokens}: the model's keyword arguments
    Without tgt_ds (generation) only the source side is built.
    """
    ids = np.asarray(indices, dtype=np.int64)
    src_items = [np.asarray(src_ds[int(i)], dtype=np.int64) for i in ids]
    src_width = max(map(len, src_items), default=0) + 1
    src_tokens, src_lengths = _pad_rows(src_items, pad, src_width, 0)
    rows = np.arange(len(ids))
    src_tokens[rows, src_lengths] = eos
    batch = {
        "id": torch.from_numpy(ids),
        "nsentences": len(ids),
        "src_tokens": torch.from_numpy(src_tokens),
        "src_lengths": torch.from_numpy(src_lengths + 1),
    }
    if tgt_ds is not None:
        tgt_items = [np.asarray(tgt_ds[int(i)], dtype=np.int64) for i in ids]
        tgt_width = max(map(len, tgt_items), default=0) + 1
        target, tgt_lengths = _pad_rows(tgt_items, pad, tgt_width, 0)
        target[rows, tgt_lengths] = eos
        prev, _ = _pad_rows(tgt_items, pad, tgt_width, 1)
        prev[:, 0] = eos if bos is None else bos
        batch.update(
            target=torch.from_numpy(target),
            prev_output_tokens=torch.from_numpy(prev),
            ntokens=int(tgt_lengths.sum()) + len(ids),
        )
    batch["net_input"] = {
        key: batch[key] for key in ("src_tokens", "src_lengths", "prev_output_tokens") if key in batch
    }
    return batch
