"""Count n-gram reference levels: what a unigram, bigram or trigram table fitted on the training split scores.

An LM's bits per token next to these says what it has learned: at the bigram level it knows which symbol
follows which, below the trigram level it uses more context than two symbols. Each table is a count model
with add-one (Laplace) smoothing, fitted on the training tokens and scored on every token of the split
that has its full n-1 symbols of history (the first n-1 tokens of the split are skipped).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

ORDER_NAMES = {1: "unigram", 2: "bigram", 3: "trigram", 4: "4-gram", 5: "5-gram"}
MAX_TABLE = 50_000_000  # cells of a dense count table; larger orders/vocabularies are not computed


def _context_ids(tokens: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Id of each n-gram (tokens t-n+1..t, base vocab_size) for t = n-1 .. len-1."""
    count = len(tokens) - order + 1
    ids = np.zeros(count, dtype=np.int64)
    for i in range(order):
        ids = ids * vocab_size + tokens[i : i + count]
    return ids


def ngram_bits(train: np.ndarray, test: np.ndarray, vocab_size: int, order: int) -> float:
    """Mean bits per token of `test` under an add-one n-gram table counted on `train`."""
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    if len(test) < order or len(train) < order:
        raise ValueError(f"an order-{order} reference needs at least {order} tokens in each split")
    train, test = train.astype(np.int64, copy=False), test.astype(np.int64, copy=False)
    counts = np.bincount(_context_ids(train, order, vocab_size), minlength=vocab_size**order)
    counts = counts.reshape(-1, vocab_size).astype(np.float64) + 1.0
    log_prob = np.log(counts) - np.log(counts.sum(axis=1, keepdims=True))
    return float(-log_prob.reshape(-1)[_context_ids(test, order, vocab_size)].mean() / math.log(2))


def ngram_references(
    train: np.ndarray, test: np.ndarray, vocab_size: int, orders: Sequence[int] = (1, 2, 3)
) -> Dict[str, float]:
    """{'unigram': bits, 'bigram': bits, ...} for the orders whose table fits in MAX_TABLE cells."""
    return {
        ORDER_NAMES.get(order, f"{order}-gram"): ngram_bits(train, test, vocab_size, order)
        for order in orders
        if vocab_size**order <= MAX_TABLE
    }
