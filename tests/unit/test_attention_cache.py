"""Incremental-decoding caches: encoder-decoder keys computed once per source row and then selected for the
beams give bit-for-bit what computing them per beam gives."""

from __future__ import annotations

import pytest
import torch

from toolkit.modules.attention import MultiheadAttention, reorder_cache

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
