"""n-gram reference levels against a direct count-and-divide computation, and the end-of-training summary."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from toolkit.eval.ngram_reference import ngram_bits, ngram_references
from toolkit.train.summary import format_summary, run_summary


def direct_bits(train: list[int], test: list[int], vocab: int, order: int) -> float:
    grams = Counter(tuple(train[i : i + order]) for i in range(len(train) - order + 1))
    contexts = Counter(tuple(train[i : i + order - 1]) for i in range(len(train) - order + 1))
    total = 0.0
    for i in range(order - 1, len(test)):
        gram = tuple(test[i - order + 1 : i + 1])
        total -= math.log2((grams[gram] + 1) / (contexts[gram[:-1]] + vocab))
    return total / (len(test) - order + 1)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ngram_bits_equal_a_direct_count(order):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 5, 400), rng.integers(0, 5, 60)
    expected = direct_bits(train.tolist(), test.tolist(), 5, order)
    assert ngram_bits(train, test, 5, order) == pytest.approx(expected, rel=1e-12)


def test_references_on_the_shipped_sample_are_ordered(text8_small):
    train = np.fromfile(text8_small / "train.bin", dtype=np.uint8)
    test = np.fromfile(text8_small / "test.bin", dtype=np.uint8)
    refs = ngram_references(train, test, 27)
    assert list(refs) == ["unigram", "bigram", "trigram"]
    assert refs["trigram"] < refs["bigram"] < refs["unigram"] < math.log2(27)


def test_orders_whose_table_is_too_large_are_skipped():
    tokens = np.arange(10) % 3
    assert list(ngram_references(tokens, tokens, 300_000, orders=(1, 2))) == ["unigram"]


def test_summary_from_a_train_log():
    records = [
        {"kind": "train", "step": 10, "tokens": 640},
        {"kind": "valid", "step": 10, "bpc": 3.0},
        {"kind": "train", "step": 20, "tokens": 640},
        {"kind": "valid", "step": 20, "bpc": 2.5},
        {"kind": "train", "step": 30, "tokens": 320},
        {"kind": "valid", "step": 30, "bpc": 2.7},
    ]
    final = {"subset": "test", "bpc": 2.6, "protocol": "windows", "window": 128, "stride": 128, "tokens": 999}
    summary = run_summary(records, "bpc", final, 12.34, {"unigram": 4.1, "bigram": 3.4, "trigram": 2.9})
    assert summary["best_valid"] == 2.5 and summary["best_valid_step"] == 20
    assert summary["tokens_seen"] == 1600 and summary["steps"] == 30 and summary["wall_seconds"] == 12.3
    text = format_summary(json.loads(json.dumps(summary)))
    assert "best valid bpc: 2.5000 at step 20" in text
    assert "test bpc: 2.6000 (protocol=windows, window=128, stride=128, tokens=999)" in text
    assert "unigram 4.10, bigram 3.40, trigram 2.90" in text
