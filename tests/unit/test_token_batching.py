"""Token batching: determinism, the max_tokens bound, exactly-once coverage, over-long policies, collation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from toolkit.data.token_batching import batches_for_epoch, collate
from toolkit.errors import DataError

RNG = np.random.default_rng(123)
SRC = RNG.integers(0, 80, 2000)
TGT = RNG.integers(0, 80, 2000)


def padded_size(batch: np.ndarray) -> int:
    """An independent reading of the bound: rows * longest row, eos included, over both sides."""
    longest = max(max(SRC[i], TGT[i]) + 1 for i in batch)
    return len(batch) * longest


def test_deterministic_and_epoch_dependent() -> None:
    a = batches_for_epoch(SRC, TGT, 1024, seed=7, epoch=3)
    b = batches_for_epoch(SRC.tolist(), TGT.tolist(), 1024, seed=7, epoch=3)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = batches_for_epoch(SRC, TGT, 1024, seed=7, epoch=4)
    d = batches_for_epoch(SRC, TGT, 1024, seed=8, epoch=3)
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert [x.tolist() for x in a] != [x.tolist() for x in d]


def test_every_example_exactly_once_and_bound_respected() -> None:
    for max_tokens, max_sentences in ((1024, None), (300, None), (4096, 16)):
        batches = batches_for_epoch(SRC, TGT, max_tokens, seed=1, epoch=1, max_sentences=max_sentences)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(SRC)))
        assert all(padded_size(batch) <= max_tokens for batch in batches)
        if max_sentences:
            assert max(map(len, batches)) == max_sentences


def test_batches_are_as_full_as_the_bound_allows() -> None:
    # 95 examples of cost 10 under max_tokens 100: nine batches of 10 and one of 5
    batches = batches_for_epoch([9] * 95, [4] * 95, 100, seed=0, epoch=0)
    assert sorted(map(len, batches)) == [5] + [10] * 9


def test_length_bucketing_groups_similar_lengths() -> None:
    batches = batches_for_epoch(SRC, TGT, 1024, seed=1, epoch=1)
    ranges = sorted((np.maximum(SRC[b], TGT[b]).min(), np.maximum(SRC[b], TGT[b]).max()) for b in batches)
    # cut from one length-sorted order: batches' length ranges touch at most at their ends
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))


def test_skip_policy_warns_and_drops_exactly_the_overlong(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        batches = batches_for_epoch(SRC, TGT, 4096, seed=1, epoch=1, max_source_positions=64, max_target_positions=70)
    expected = np.flatnonzero((SRC + 1 <= 64) & (TGT + 1 <= 70))
    assert sorted(np.concatenate(batches).tolist()) == expected.tolist()
    dropped = len(SRC) - len(expected)
    first = int(np.flatnonzero((SRC + 1 > 64) | (TGT + 1 > 70))[0])
    assert caplog.messages == [
        f"skipping {dropped} of 2000 examples too long for max_source_positions=64 / max_target_positions=70 "
        f"(first: example {first}, source {SRC[first]}, target {TGT[first]} tokens)"
    ]


def test_fail_policy_names_the_example() -> None:
    with pytest.raises(DataError) as error:
        batches_for_epoch([3, 12, 4, 30], [2, 5, 2, 2], 10, seed=0, epoch=0, overlong="fail")
    assert str(error.value) == (
        "example 1 is too long (source 12, target 5 tokens, 13 with eos) for max_tokens=10; "
        "raise the limit or set overlong=skip"
    )


def test_collate_fairseq_conventions() -> None:
    src = [np.array([10, 11, 12], np.uint16), np.array([13], np.uint16), np.array([], np.uint16)]
    tgt = [np.array([20], np.uint16), np.array([21, 22, 23, 24], np.uint16), np.array([25, 26], np.uint16)]
    pad, eos = 1, 2
    batch = collate([2, 0], src, tgt, pad=pad, eos=eos)
    assert batch["id"].tolist() == [2, 0]
    assert batch["src_tokens"].tolist() == [[2, 1, 1, 1], [10, 11, 12, 2]]
    assert batch["src_lengths"].tolist() == [1, 4]
    assert batch["target"].tolist() == [[25, 26, 2], [20, 2, 1]]
    assert batch["prev_output_tokens"].tolist() == [[2, 25, 26], [2, 20, 1]]
    assert batch["ntokens"] == 5 and batch["nsentences"] == 2
    assert batch["src_tokens"].dtype == torch.int64
    assert set(batch["net_input"]) == {"src_tokens", "src_lengths", "prev_output_tokens"}
    with_bos = collate([1], src, tgt, pad=pad, eos=eos, bos=0)
    assert with_bos["prev_output_tokens"].tolist() == [[0, 21, 22, 23, 24]]
    source_only = collate([0, 1], src, None, pad=pad, eos=eos)
    assert "target" not in source_only and source_only["src_tokens"].tolist() == [[10, 11, 12, 2], [13, 2, 1, 1]]
