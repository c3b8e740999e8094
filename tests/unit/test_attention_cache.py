"""Incremental-decoding caches: encoder-decoder keys computed once per source row and then selected for the
beams give bit-for-bit what computing them per beam gives."""

from __future__ import annotations

import pytest
import torch

from toolkit.modules.attention.base import MultiheadAttention, reorder_cache

D, H = 16, 4


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
    reorder_cache(shared, expand)  # the beams' rows
    assert torch.equal(m(query, source[expand], cache=shared, static_kv=True), expected)
    assert torch.equal(shared["k"], per_beam["k"]) and torch.equal(shared["v"], per_beam["v"])


@torch.no_grad()
def test_beams_sharing_one_source_copy_attend_as_with_their_own():
    # shared_source_attention: key row i serves query rows 4i..4i+3, whose queries attend together
    torch.manual_seed(2)
    m = MultiheadAttention(D, H).double().eval()
    source, beams = torch.randn(3, 7, D, dtype=torch.float64), 4
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, :3] = True
    expand = torch.arange(3).repeat_interleave(beams)
    query = torch.randn(3 * beams, 2, D, dtype=torch.float64)
    shared = m(query, source, key_padding_mask=padding)
    per_beam = m(query, source[expand], key_padding_mask=padding[expand])
    torch.testing.assert_close(shared, per_beam, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="attention: 12 query rows cannot share 3 key rows in causal attention"):
        m(query, source, causal=True)


def select(cache: dict, order: torch.Tensor) -> None:
    """Reordering written out: every cached tensor's rows selected."""
    for name in list(cache):
        cache[name] = cache[name].index_select(0, order)


@torch.no_grad()
def test_grown_reordering_equals_plain_selection():
    # grow=True selects the past into a buffer whose free last slot the next step fills
    torch.manual_seed(0)
    m = MultiheadAttention(D, H).eval()
    x = torch.randn(6, 5, D)
    first, second = torch.tensor([1, 1, 0, 3, 5, 2]), torch.tensor([5, 4, 3, 2, 1, 0])
    shrink = torch.tensor([0, 0, 4, 2])  # rows leave the batch (finished sentences)
    grown, plain = {}, {}
    assert torch.equal(m(x[:, :1], causal=True, cache=grown), m(x[:, :1], causal=True, cache=plain))
    for order in (first, second):  # two reorderings with no step between them
        reorder_cache(grown, order, grow=True), select(plain, order)
        x = x[order]
    assert grown["k_grown"].shape == (6, H, 2, D // H)
    assert torch.equal(m(x[:, 1:2], causal=True, cache=grown), m(x[:, 1:2], causal=True, cache=plain))
    assert torch.equal(grown["k"], plain["k"]) and "k_grown" not in grown
    reorder_cache(grown, shrink, grow=True), select(plain, shrink)
    x = x[shrink]
    out = m(x[:, 2:4], causal=True, cache=grown)  # two positions at once: they do not fit the free slot
    assert out.size(0) == 4 and torch.equal(out, m(x[:, 2:4], causal=True, cache=plain))
    reorder_cache(grown, torch.tensor([3, 2, 1, 0]), grow=True), select(plain, torch.tensor([3, 2, 1, 0]))
    x = x[torch.tensor([3, 2, 1, 0])]
    assert torch.equal(m(x[:, 4:5], causal=True, cache=grown), m(x[:, 4:5], causal=True, cache=plain))
    assert torch.equal(grown["k"], plain["k"]) and torch.equal(grown["v"], plain["v"])
