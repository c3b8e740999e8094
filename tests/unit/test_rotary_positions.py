"""Rotary positions: the rotation against complex multiplication, relative scores, cached decoding, the LM."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.errors import ConfigError
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig
from toolkit.modules.attention.base import MultiheadAttention, reorder_cache
from toolkit.modules.rotary import RotaryPositions


def test_rotation_is_multiplication_by_unit_complex_numbers():
    torch.manual_seed(0)
    head_dim, offset = 8, 5
    x = torch.randn(2, 3, 6, head_dim, dtype=torch.float64)
    # independent: pair i = (x_i, x_{i + head_dim/2}) as one complex number, turned by position * base^(-2i/d)
    pairs = torch.complex(x[..., : head_dim // 2], x[..., head_dim // 2 :])
    positions = torch.arange(offset, offset + 6, dtype=torch.float64)[:, None]
    frequencies = torch.tensor([10000.0 ** (-2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
    turned = pairs * torch.polar(torch.ones_like(positions * frequencies), positions * frequencies)
    expected = torch.cat([turned.real, turned.imag], dim=-1)
    got = RotaryPositions(head_dim, 64).double()(x, offset)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # a rotation keeps every pair's length
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1), rtol=0, atol=1e-6)


def test_query_key_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    rotary = RotaryPositions(16, 128)
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    scores = lambda shift: rotary(q, shift) @ rotary(k, shift).transpose(-1, -2)  # noqa: E731
    torch.testing.assert_close(scores(0), scores(40), rtol=0, atol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-2)  # positions did change them


@pytest.mark.parametrize("grow", [False, True])
def test_cached_step_by_step_attention_equals_the_whole_sequence(grow):
    torch.manual_seed(0)
    attention = MultiheadAttention(32, 4).eval()
    attention.use_rotary(RotaryPositions(8, 64))
    x = torch.randn(3, 7, 32)
    whole = attention(x, causal=True)
    cache: dict = {}
    steps = []
    for t in range(7):
        steps.append(attention(x[:, t : t + 1], causal=True, cache=cache))
        reorder_cache(cache, torch.arange(3), grow=grow)  # grow: the next step fills a free slot in place
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=0, atol=1e-5)


def lm(**fields) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerLMConfig(**{"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, **fields}), 27)


def test_rotary_lm_saves_the_learned_models_tensors_less_its_position_table():
    learned, rotary = lm(), lm(positions="rotary")
    assert set(rotary.state_dict()) == set(learned.state_dict()) - {"positions.weight"}
    assert "position_parameters" not in rotary.parameter_breakdown()
    # the same weights with the rotation switched off give other outputs: the layers do use it (weights
    # of the fairseq scheme, large enough that attention is far from uniform)
    rotary = lm(positions="rotary", init="fairseq").eval()
    tokens = torch.randint(0, 27, (2, 12))
    with_rotation = rotary(tokens)[0]
    for layer in rotary.layers:
        layer.self_attn.rotary = None
    assert not torch.allclose(with_rotation, rotary(tokens)[0], atol=1e-4)


def test_rotary_lm_refuses_what_it_cannot_rotate():
    with pytest.raises(ConfigError, match="head_dim=5 must be even"):
        lm(positions="rotary", d_model=20, n_heads=4)
    with pytest.raises(ConfigError, match="model.positions=rotary needs query-key attention"):
        lm(positions="rotary", attention="adaptive_span")
    with pytest.raises(ConfigError, match="longer than model.max_positions=16"):
        lm(positions="rotary", max_positions=16)(torch.zeros(1, 17, dtype=torch.long))
    table = lm(positions="rotary", max_positions=16).layers[0].self_attn.rotary
    assert math.isclose(table.cos[15, 0].item(), math.cos(15.0), abs_tol=1e-6)  # pair 0 turns 1 radian per step
