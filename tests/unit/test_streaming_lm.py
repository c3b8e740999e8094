"""The streamed LM: caches, span terms, all-attention layers, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import read_in_blocks
from toolkit.errors import ConfigError
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.modules.attention.relative import StreamInputs
from toolkit.modules.attention.span_attention import (
    AdaptiveSpanConfig,
    CausalRelativeAttention,
    SpanMode,
    current_windows,
    span_stats,
)
from toolkit.modules.transformer_layer import TransformerLayer

V, D, H = 13, 16, 2


def tiny(**overrides) -> StreamingLMConfig:
    base = dict(
        vocab_size=V,
        d_model=D,
        n_layers=2,
        n_heads=H,
        d_ff=24,
        block_size=16,
        attn_span=200,
        span_ramp=8,
        dropout=0.0,
        cache_margin=0,
    )
    base.update(overrides)
    return StreamingLMConfig(**base)


def set_spans(model: StreamingLM, spans: list) -> None:
    """Span z per head (same for every layer)."""
    for layer in model.layers:
        layer.self_attn.span.span_param.data = torch.tensor(spans) / layer.self_attn.max_span


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # static adaptive span, window 64 < S = 200, no cache margin
        {"persistent_memory": 3},  # all-attention
        {"adaptive_span": False, "attn_span": 24},  # fixed hard window
        {"dynamic_span": True, "attn_span": 40, "cache_margin": 40},  # the cache always holds S positions
    ],
)
def test_block_by_block_with_cache_equals_one_pass(overrides: dict) -> None:
    torch.manual_seed(0)
    model = StreamingLM(tiny(**overrides)).eval()
    if overrides.get("adaptive_span", True) and not overrides.get("dynamic_span"):
        set_spans(model, [12.0, 55.5])  # 55.5 + 8: the key at distance 63 still counts
    if overrides.get("dynamic_span"):
        for layer in model.layers:
            torch.nn.init.normal_(layer.self_attn.span.predictor.weight, std=0.3)
    tokens = torch.randint(0, V, (2, 6 * 16))  # longer than any window: the cache must be trimmed right
    whole, _, _ = model(tokens)
    torch.testing.assert_close(read_in_blocks(model, tokens, 16), whole, atol=1e-5, rtol=1e-5)


def test_cache_keeps_the_current_window_plus_margin_detached() -> None:
    torch.manual_seed(1)
    model = StreamingLM(tiny(cache_margin=8))
    set_spans(model, [12.0, 40.0])  # window 64
    cache = model.init_cache(3)
    assert [tuple(c.shape) for c in cache] == [(3, 0, D)] * 2
    for expected in (16, 32, 48, 64, 71, 71):  # window 64 reaches 63 back, plus 8
        _, _, cache = model(torch.randint(0, V, (3, 16)), cache)
        assert [c.size(1) for c in cache] == [expected] * 2
        assert not any(c.requires_grad for c in cache)
    assert current_windows(model) == [64, 64]


def test_span_l1_is_sum_of_layer_means_with_gradient_to_span_parameters() -> None:
    model = StreamingLM(tiny(n_layers=3))
    set_spans(model, [10.0, 30.0])
    logits, aux, _ = model(torch.randint(0, V, (2, 16)))
    assert logits.shape == (2, 16, V) and set(aux) == {"span_l1"}
    assert aux["span_l1"].item() == pytest.approx(3 * 20.0)
    aux["span_l1"].backward()
    for layer in model.layers:
        assert layer.self_attn.span.span_param.grad.tolist() == pytest.approx([100.0, 100.0])  # S / H


def test_after_update_keeps_spans_in_range() -> None:
    model = StreamingLM(tiny())
    set_spans(model, [10.0, 190.0])
    optimizer = torch.optim.SGD([layer.self_attn.span.span_param for layer in model.layers], lr=1.0)
    for layer in model.layers:
        layer.self_attn.span.span_param.grad = torch.tensor([3.0, -3.0])
    optimizer.step()
    model.after_update()
    assert span_stats(model).tolist() == [[0.0, 200.0], [0.0, 200.0]]


def test_span_stats_per_layer_and_head() -> None:
    model = StreamingLM(tiny(n_layers=3))
    set_spans(model, [12.5, 50.0])
    assert span_stats(model).tolist() == [[12.5, 50.0]] * 3
    fixed = StreamingLM(tiny(adaptive_span=False, attn_span=24))
    assert span_stats(fixed).tolist() == [[24.0, 24.0]] * 2
    _, aux, _ = fixed(torch.randint(0, V, (1, 16)))
    assert aux == {}


def test_dynamic_span_model_reports_per_position_spans_in_range() -> None:
    torch.manual_seed(2)
    model = StreamingLM(tiny(dynamic_span=True, span_init=0.1))
    for layer in model.layers:
        torch.nn.init.normal_(layer.self_attn.span.predictor.weight, std=0.5)
    _, aux, _ = model(torch.randint(0, V, (2, 16)))
    stats = span_stats(model)
    assert stats.shape == (2, H) and bool((stats > 0).all() and (stats < 200).all())
    aux["span_l1"].backward()
    assert all(layer.self_attn.span.predictor.weight.grad.abs().sum() > 0 for layer in model.layers)


def test_all_attention_layer_without_memory_is_plain_attention_without_ffn() -> None:
    torch.manual_seed(3)
    relative = AdaptiveSpanConfig(200, SpanMode.adaptive, span_ramp=8)
    attention = lambda d, h, p: CausalRelativeAttention(d, h, p, relative, shared_keys=True)  # noqa: E731
    layer = TransformerLayer(D, H, 24, dropout=0.0, self_attention_cls=attention, use_ffn=False)
    assert layer.ffn is None and layer.ffn_norm is None
    layer.self_attn.span.span_param.data = torch.tensor([12.0, 40.0]) / 200
    h, cache, key_pe = torch.randn(2, 16, D), torch.randn(2, 70, D), torch.randn(D // H, 200)
    out = layer(h, causal=True, stream=StreamInputs(cache, key_pe))
    # plain attention written out: softmax over the 64 most recent keys, masked, renormalised
    x = torch.cat([cache, h], dim=1)
    split = lambda t: t.view(2, -1, H, D // H).transpose(1, 2)  # noqa: E731
    q, k, v = split(layer.self_attn.q_proj(h)), split(layer.self_attn.k_proj(x)), split(layer.self_attn.v_proj(x))
    dist = (70 + torch.arange(16))[:, None] - torch.arange(86)[None, :]
    pos = torch.einsum("bhmd,dmn->bhmn", q, key_pe[:, (199 - dist).clamp(0, 199)])
    logits = (q @ k.transpose(-1, -2) + pos) / math.sqrt(D // H)
    logits = logits.masked_fill((dist < 0) | (dist >= 64), -math.inf)
    w = logits.softmax(-1) * ((8 + torch.tensor([12.0, 40.0])[:, None, None] - dist) / 8).clamp(0, 1)
    w = w / (w.sum(-1, keepdim=True) + 1e-8)
    attn = layer.self_attn.out_proj((w @ v).transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(out, layer.self_attn_norm(h + attn), atol=1e-5, rtol=1e-5)


def test_all_attention_drops_the_ffn_unless_kept() -> None:
    def names(cfg: StreamingLMConfig) -> set:
        params = StreamingLM(cfg).named_parameters()
        return {n[len("layers.0.") :] for n, _ in params if n.startswith("layers.0.")}

    all_attention = names(tiny(persistent_memory=4))
    assert "self_attn.persistent.keys" in all_attention and not any(n.startswith("ffn") for n in all_attention)
    assert "ffn.fc1.weight" in names(tiny(persistent_memory=4, keep_ffn=True))
    assert "ffn.fc1.weight" in names(tiny())
    assert not any(n.endswith("bias") for n in all_attention if n.startswith("self_attn."))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"dynamic_span": True, "adaptive_span": False},
            "model.dynamic_span=true needs model.adaptive_span=true",
        ),
        ({"d_model": 15}, "model.d_model=15 is not divisible by model.n_heads=2"),
        ({"span_init": 1.5}, "model.span_init must be in [0, 1], got 1.5"),
        ({"attn_span": 0}, "model.attn_span must be positive, got 0"),
    ],
)
def test_config_errors_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        StreamingLM(tiny(**overrides))
    assert str(error.value) == message


def test_missing_vocab_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^model.vocab_size must be a positive integer, got '\?\?\?'$"):
        StreamingLM(StreamingLMConfig())
