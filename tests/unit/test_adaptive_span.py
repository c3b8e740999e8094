"""Adaptive span masks and cached relative attention, checked against dense computations written here."""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from toolkit.modules.attention.adaptive_span import AdaptiveMask, DynamicSpanMask, window_length
from toolkit.modules.attention.relative import RelativeAttention, skew, unskew

D, H = 16, 2
DH = D // H


def heads(x: torch.Tensor) -> torch.Tensor:
    return x.view(x.size(0), x.size(1), H, DH).transpose(1, 2)


def dense_attention(
    attn: RelativeAttention,
    h: torch.Tensor,
    cache: torch.Tensor,
    key_pe: torch.Tensor,
    z: Optional[torch.Tensor],
) -> torch.Tensor:
    """Attention over every cached + current position at once: distances, masks and the persistent keys
    are built explicitly (no skew, no trimming). z: spans broadcastable to (B, H, M, 1), None = hard S."""
    s, ramp = attn.max_span, (attn.span.ramp if attn.span is not None else 0)
    c, m = cache.size(1), h.size(1)
    x = torch.cat([cache, h], dim=1)
    q, k, v = heads(attn.q_proj(h)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    dist = (c + torch.arange(m))[:, None] - torch.arange(c + m)[None, :]  # (M, C+M)
    visible = (dist >= 0) & (dist < s)
    pe = key_pe[:, (s - 1 - dist).clamp(0, s - 1)]  # (DH, M, C+M)
    logits = (q @ k.transpose(-1, -2) + torch.einsum("bhmd,dmn->bhmn", q, pe)) / math.sqrt(DH)
    logits = logits.masked_fill(~visible, float("-inf"))
    n = 0 if attn.persistent is None else attn.persistent.size
    if n:
        pk = attn.persistent.keys * math.sqrt(DH)
        logits = torch.cat([logits, q @ pk.transpose(-1, -2) / math.sqrt(DH)], dim=-1)
    w = logits.softmax(-1)
    if z is not None:
        ctx = w[..., : c + m]
        mask = ((ramp + z - dist.float()) / ramp).clamp(0, 1) if ramp else (dist <= z).float()
        w = torch.cat([ctx * mask, w[..., c + m :]], dim=-1)
        w = w / (w.sum(-1, keepdim=True) + 1e-8)
    out = w[..., : c + m] @ v
    if n:
        out = out + w[..., c + m :] @ (attn.persistent.values * math.sqrt(n))
    return attn.out_proj(out.transpose(1, 2).reshape(h.size(0), m, D))


def make_attention(s: int, ramp: int, spans: Optional[list], n_persistent: int = 0) -> RelativeAttention:
    mask = None
    if spans is not None:
        mask = AdaptiveMask(H, s, ramp)
        mask.span_param.data = torch.tensor(spans) / s
    return RelativeAttention(D, H, s, dropout=0.0, span=mask, n_persistent=n_persistent)


def test_mask_values_at_chosen_distances() -> None:
    mask = AdaptiveMask(2, max_span=100, ramp=10)
    mask.span_param.data = torch.tensor([0.2, 0.5])  # z = 20, 50
    weights = mask(torch.ones(1, 2, 1, 80), normalize=False)[0, :, 0]  # slot j has distance 79 - j
    at = lambda head, x: weights[head, 79 - x].item()  # noqa: E731
    assert [at(0, x) for x in (0, 20, 25, 29, 30, 60)] == pytest.approx([1.0, 1.0, 0.5, 0.1, 0.0, 0.0])
    assert [at(1, x) for x in (0, 50, 55, 59, 60)] == pytest.approx([1.0, 1.0, 0.5, 0.1, 0.0])
    assert mask(torch.ones(1, 2, 1, 80)).sum(-1).flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_window_length_rounds_up_to_64_and_caps_at_max_span() -> None:
    mask = AdaptiveMask(2, max_span=100, ramp=10)
    assert mask.current_max_span() == 64  # z = 0: span R
    mask.span_param.data = torch.tensor([0.2, 0.5])
    assert mask.current_max_span() == 64  # 50 + 10
    mask.span_param.data = torch.tensor([0.2, 0.55])
    assert mask.current_max_span() == 100  # 65 -> 128, capped at S
    assert [window_length(z, 32, 8192) for z in (0.0, 32.0, 32.5, 300.0, 8192.0)] == [64, 64, 128, 384, 8192]


def test_clamp_keeps_spans_in_range_and_span_loss_is_mean_z() -> None:
    mask = AdaptiveMask(3, max_span=100, ramp=10)
    mask.span_param.data = torch.tensor([-0.5, 0.3, 1.7])
    mask.clamp_()
    assert mask.span_param.tolist() == pytest.approx([0.0, 0.3, 1.0])
    assert mask.span_loss().item() == pytest.approx(130.0 / 3)
    mask.span_loss().backward()
    assert mask.span_param.grad.tolist() == pytest.approx([100.0 / 3] * 3)


def test_skew_is_the_inverse_of_unskew_inside_the_window() -> None:
    x = torch.arange(2 * 3 * 6.0).view(2, 3, 6)  # M = 3, L = 4: M + L - 1 key positions
    assert unskew(x, 4)[1].tolist() == [[18, 19, 20, 21], [25, 26, 27, 28], [32, 33, 34, 35]]
    assert skew(unskew(x, 4))[0].tolist() == [[0, 1, 2, 3, 0, 0], [0, 7, 8, 9, 10, 0], [0, 0, 14, 15, 16, 17]]


def test_full_span_with_zero_ramp_is_ordinary_causal_attention() -> None:
    torch.manual_seed(0)
    attn = make_attention(32, ramp=0, spans=[32.0, 32.0])
    h = torch.randn(2, 12, D)
    out = attn(h, h.new_zeros(2, 0, D), torch.zeros(DH, 32)).out
    q, k, v = heads(attn.q_proj(h)), heads(attn.k_proj(h)), heads(attn.v_proj(h))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attn.out_proj(causal.transpose(1, 2).reshape(2, 12, D))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_len", [0, 5, 40, 100])
@pytest.mark.parametrize("n_persistent", [0, 3])
def test_cached_relative_attention_matches_dense_computation(cache_len: int, n_persistent: int) -> None:
    torch.manual_seed(1)
    attn = make_attention(200, ramp=8, spans=[10.0, 37.5], n_persistent=n_persistent)
    h, cache = torch.randn(2, 24, D, requires_grad=True), torch.randn(2, cache_len, D)
    key_pe = torch.randn(DH, 200, requires_grad=True)
    result = attn(h, cache, key_pe)
    assert result.window == 64  # 37.5 + 8 rounded up: trimmed from S = 200
    expected = dense_attention(attn, h, cache, key_pe, attn.span.spans()[None, :, None, None])
    torch.testing.assert_close(result.out, expected, atol=1e-5, rtol=1e-5)
    # the strided skew views must also route gradients to the right positions
    weights = torch.randn_like(expected)
    grads = [torch.autograd.grad((out * weights).sum(), (h, key_pe)) for out in (result.out, expected)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fixed_window_matches_dense_computation() -> None:
    torch.manual_seed(2)
    attn = make_attention(20, ramp=0, spans=None, n_persistent=2)
    h, cache, key_pe = torch.randn(2, 24, D), torch.randn(2, 30, D), torch.randn(DH, 20)
    result = attn(h, cache, key_pe)
    assert result.window == 20 and result.span_cost is None
    expected = dense_attention(attn, h, cache, key_pe, None)
    torch.testing.assert_close(result.out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_persistent", [0, 4])
def test_trimmed_and_untrimmed_attention_agree_for_short_spans(n_persistent: int) -> None:
    torch.manual_seed(3)
    attn = make_attention(256, ramp=16, spans=[20.0, 45.0], n_persistent=n_persistent)
    h, cache, key_pe = torch.randn(2, 16, D), torch.randn(2, 300, D), torch.randn(DH, 256)
    trimmed = attn(h, cache, key_pe)
    attn.trim = False
    full = attn(h, cache, key_pe)
    assert (trimmed.window, full.window) == (64, 256)
    torch.testing.assert_close(trimmed.out, full.out, atol=1e-6, rtol=1e-5)


def test_span_parameters_get_gradient_through_the_mask() -> None:
    torch.manual_seed(4)
    attn = make_attention(100, ramp=8, spans=[3.0, 20.0])
    result = attn(torch.randn(2, 24, D), torch.randn(2, 50, D), torch.randn(DH, 100))
    result.out.square().sum().backward()
    assert bool((attn.span.span_param.grad != 0).all())
    assert result.span_cost.item() == pytest.approx(11.5)


def test_dynamic_span_is_per_position_in_range_and_matches_dense_computation() -> None:
    torch.manual_seed(5)
    mask = DynamicSpanMask(D, H, max_span=400, ramp=8, init=0.1)
    assert mask.spans(torch.randn(1, 3, D)).flatten().tolist() == pytest.approx([40.0] * (H * 3), abs=1e-4)
    torch.nn.init.normal_(mask.predictor.weight, std=0.3)
    attn = RelativeAttention(D, H, 400, span=mask, n_persistent=2)
    h, cache, key_pe = torch.randn(2, 20, D), torch.randn(2, 450, D), torch.randn(DH, 400)
    z = mask.spans(h)
    assert z.shape == (2, H, 20) and bool((z > 0).all() and (z < 400).all()) and z.std() > 10.0
    result = attn(h, cache, key_pe)
    assert 400 > result.window == window_length(z.max().item(), 8, 400) >= z.max().item() + 8
    expected = dense_attention(attn, h, cache, key_pe, z[..., None])
    torch.testing.assert_close(result.out, expected, atol=1e-5, rtol=1e-5)
    result.span_cost.backward()
    assert result.span_cost.item() == pytest.approx(z.mean().item())
    assert bool((mask.predictor.bias.grad > 0).all()) and mask.predictor.weight.grad.abs().sum() > 0
    assert mask.stats().tolist() == pytest.approx(z.mean(dim=(0, 2)).tolist())
