"""Incremental-decoding caches: deferred beam reordering and encoder-decoder keys computed per source row
give bit-for-bit what eager reordering and per-beam computation give."""

from __future__ import annotations

import torch

from toolkit.modules.attention import ROWS_KEY, MultiheadAttention, reorder_cache

D, H = 16, 4


def select(cache: dict, order: torch.Tensor) -> None:
    """Eager reordering, written out: every cached tensor's rows selected now."""
    for name in list(cache):
        cache[name] = cache[name].index_select(0, order)


@torch.no_grad()
def test_deferred_reordering_equals_eager_selection():
    torch.manual_seed(0)
    m = MultiheadAttention(D, H).eval()
    x = torch.randn(6, 4, D)
    first, second = torch.tensor([1, 1, 0, 3, 5, 2]), torch.tensor([5, 4, 3, 2, 1, 0])
    shrink = torch.tensor([0, 0, 4, 2])  # rows leave the batch (finished sentences)
    deferred, eager = {}, {}
    assert torch.equal(m(x[:, :1], causal=True, cache=deferred), m(x[:, :1], causal=True, cache=eager))
    for order in (first, second):  # two reorderings with no step between them compose
        reorder_cache(deferred, order), select(eager, order)
        x = x[order]
    assert torch.equal(deferred[ROWS_KEY], first[second])
    assert torch.equal(m(x[:, 1:2], causal=True, cache=deferred), m(x[:, 1:2], causal=True, cache=eager))
    assert ROWS_KEY not in deferred and torch.equal(deferred["k"], eager["k"])
    reorder_cache(deferred, shrink), select(eager, shrink)
    x = x[shrink]
    out = m(x[:, 2:4], causal=True, cache=deferred)  # two positions at once after the reordering
    assert out.size(0) == 4 and torch.equal(out, m(x[:, 2:4], causal=True, cache=eager))
    assert torch.equal(deferred["k"], eager["k"]) and torch.equal(deferred["v"], eager["v"])


@torch.no_grad()
def test_source_keys_computed_once_per_sentence_equal_per_beam_ones():
    torch.manual_seed(1)
    m = MultiheadAttention(D, H).eval()
    source, beams = torch.randn(3, 7, D), 4
    expand = torch.arange(3).repeat_interleave(beams)
    query = torch.randn(3 * beams, 1, D)
    per_beam: dict = {}
    expected = m(query, source[expand], cache=per_beam, static_kv=True)
    shared: dict = {}
    m.cache_static_kv(source, shared)
    reorder_cache(shared, expand)  # the beams' rows: selected when the first step reads them
    assert torch.equal(m(query, source[expand], cache=shared, static_kv=True), expected)
    assert torch.equal(shared["k"], per_beam["k"]) and torch.equal(shared["v"], per_beam["v"])
