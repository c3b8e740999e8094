"""The ATTENTIONS registry: names and typed options in every model, one-line errors for what cannot work, and
relative attention with a span in windowed models and in the decoder (incremental decoding, beam search)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from tests.conftest import decode_incrementally
from toolkit.config.compose import compose_train_config
from toolkit.errors import ConfigError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.models.transformer import TransformerConfig, TransformerModel
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig
from toolkit.modules.attention import ATTENTIONS
from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.mae import MAEAttention, RelativeMAEAttention
from toolkit.modules.attention.relative import RelativeAttention
from toolkit.modules.attention.span_attention import AdaptiveSpanConfig, CausalRelativeAttention, SpanMode
from toolkit.modules.aux_heads import AuxHeadsConfig, IntermediateHeads

BOS, PAD, EOS, V = 0, 1, 2, 29
TASK = SimpleNamespace(vocab_size=V, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS)
SPAN = {"name": "adaptive_span", "max_span": 8, "span_ramp": 2, "span_init": 0.4}


def translation_model(seed: int = 0, **overrides) -> TransformerModel:
    base = dict(encoder_layers=2, decoder_layers=2, d_model=16, ffn_dim=32, n_heads=4, dropout=0.0, max_positions=32)
    torch.manual_seed(seed)
    return TransformerModel.build(TransformerConfig(**{**base, **overrides}), TASK).double().eval()


def decoder_span_model(seed: int = 0, **span) -> TransformerModel:
    return translation_model(seed, slot_attention={"decoder_self": {**SPAN, **span}})


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_variants():
    assert ATTENTIONS.names() == ["adaptive_span", "mae", "standard"]


def test_each_slot_takes_a_name_or_a_mapping():
    model = translation_model(slot_attention={"decoder_self": SPAN, "encoder_self": "mae"}, mae={"gate_hidden": 8})
    for layer in model.encoder_layers:
        assert type(layer.self_attn) is MAEAttention and layer.self_attn.mae_gate.fc1.out_features == 8
        assert layer.self_attn.causal_gate is False  # one gate per source sentence
    for layer in model.decoder_layers:
        assert type(layer.self_attn) is CausalRelativeAttention and layer.self_attn.max_span == 8
        assert type(layer.cross_attn) is MultiheadAttention
    assert model.aux_term_names() == ["span_l1"]
    # a mapping's options override the model's mae: block
    mapped = translation_model(attention={"name": "mae", "drop": 2}, mae={"gate_hidden": 8})
    assert (
        mapped.encoder_layers[0].self_attn.n_experts == 6
        and mapped.mae_modules()["encoder_self.0"].cfg.gate_hidden == 8
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"attention": "adaptive_span"},
            "model.attention: attention 'adaptive_span' cannot serve bidirectional (encoder) self-attention: it is "
            "causal (relative positions and spans measure distance back within one sequence); an encoder attends "
            "in both directions",
        ),
        (
            {"slot_attention": {"encoder_decoder": SPAN}},
            "model.slot_attention.encoder_decoder: attention 'adaptive_span' cannot serve encoder-decoder attention: "
            "relative positions and spans measure distance back within one sequence, not between source and target",
        ),
        (
            {"slot_attention": {"decoder_self": {**SPAN, "span_rmp": 3}}},
            "unknown key 'model.slot_attention.decoder_self.span_rmp' (did you mean: span_ramp, span?); valid: max_span, "
            "span, span_ramp, span_init, persistent_memory",
        ),
        (
            {"slot_attention": {"decoder_self": {**SPAN, "span_ramp": -1}}},
            "model.slot_attention.decoder_self.span_ramp must be >= 0, got -1",
        ),
        ({"attention": {"drop": 1}}, "model.attention.name: missing (an attention name: adaptive_span, mae, standard)"),
        ({"attention": {"name": "mae", "drop": 4}}, "model.attention.drop=4 must be between 1 and n_heads-1=3"),
        ({"attention": "mae", "mae": {"drop": 4}}, "mae.drop=4 must be between 1 and n_heads-1=3"),
    ],
)
def test_impossible_combinations_and_bad_options_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        translation_model(**overrides)
    assert str(error.value) == message


def test_wrong_option_type_names_the_key():
    with pytest.raises(ConfigError, match=r"^wrong type for key 'model.attention.span_ramp': "):
        TransformerLM(TransformerLMConfig(attention={"name": "adaptive_span", "span_ramp": "wide"}), V)


def test_streamed_lm_refuses_plain_attention_and_takes_mae_on_relative_attention():
    cfg = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=4, d_ff=32, block_size=8, attn_span=64)
    with pytest.raises(ConfigError, match=r"^model.attention: attention 'standard' cannot serve the streamed cache: "):
        StreamingLM(StreamingLMConfig(**cfg, attention="standard"))
    model = StreamingLM(StreamingLMConfig(**cfg, attention={"name": "mae", "gate_hidden": 8}))
    assert all(
        type(layer.self_attn) is RelativeMAEAttention and layer.self_attn.max_span == 64 for layer in model.layers
    )
    assert model.aux_term_names() == ["span_l1"] and model.parameter_breakdown()["gate_parameters"] == 2 * (
        16 * 8 + 8 + 8 * 4 + 4
    )
    # a mapping of adaptive_span options overrides the model's span fields
    fixed = StreamingLM(StreamingLMConfig(**cfg, attention={"name": "adaptive_span", "span": "fixed", "max_span": 32}))
    assert fixed.key_pe.size(1) == 32 and fixed.aux_term_names() == []
    assert all(layer.self_attn.span is None for layer in fixed.layers)


def test_streamed_mae_with_a_uniform_gate_is_the_relative_attention():
    """w = 1 for a uniform gate: MAE's output equals the plain relative attention's with the same weights."""
    cfg = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=4, d_ff=32, block_size=8, attn_span=64, span_init=0.3)
    torch.manual_seed(0)
    mae = StreamingLM(StreamingLMConfig(**cfg, attention={"name": "mae", "gate_hidden": 8})).double().eval()
    plain = StreamingLM(StreamingLMConfig(**cfg)).double().eval()
    plain.load_state_dict({k: v for k, v in mae.state_dict().items() if "mae_gate" not in k})
    x = tokens(2, 8)
    for layer in mae.layers:
        torch.nn.init.zeros_(layer.self_attn.mae_gate.fc2.weight)
        torch.nn.init.zeros_(layer.self_attn.mae_gate.fc2.bias)
    a, _, cache = mae(x)
    b, _, _ = plain(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for layer in mae.layers:  # a decisive gate changes the output, and only through later positions' prefixes
        torch.nn.init.normal_(layer.self_attn.mae_gate.fc2.weight, std=3.0)
    c, _, _ = mae(x)
    assert (c - b).abs().max() > 1e-3
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] - 2) % (V - 3) + 3
    torch.testing.assert_close(mae(changed)[0][:, :5], c[:, :5], rtol=0, atol=1e-12)


def reference_windowed(module: CausalRelativeAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal relative attention with a soft span mask written out position by position."""
    b, t, d = x.shape
    h, dh, s = module.n_heads, module.head_dim, module.max_span
    split = lambda y: y.view(b, t, h, dh).transpose(1, 2)  # noqa: E731
    q, k, v = split(module.q_proj(x)), split(module.k_proj(x)), split(module.v_proj(x))
    z = module.span.spans() if module.span is not None else None
    out = torch.zeros(b, h, t, dh, dtype=x.dtype)
    for i in range(t):
        keys = [j for j in range(i + 1) if i - j < s]
        dist = torch.tensor([i - j for j in keys], dtype=x.dtype)
        logits = (q[:, :, i : i + 1] @ k[:, :, keys].transpose(-1, -2))[:, :, 0]
        logits = logits + torch.einsum("bhd,dj->bhj", q[:, :, i], module.key_pe[:, [s - 1 - int(x_) for x_ in dist]])
        weights = torch.softmax(logits / math.sqrt(dh), -1)
        if z is not None:
            ramp = module.span.ramp
            weights = weights * ((ramp + z[None, :, None] - dist) / ramp).clamp(0, 1)
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-8)
        out[:, :, i] = (weights[..., None] * v[:, :, keys]).sum(2)
    return module.out_proj(out.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("span", ["fixed", "adaptive"])
def test_windowed_relative_attention_equals_a_written_out_computation(span):
    torch.manual_seed(4)
    cfg = AdaptiveSpanConfig(max_span=6, span=SpanMode(span), span_ramp=2, span_init=0.5)
    module = CausalRelativeAttention(16, 4, 0.0, cfg).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.double)
    torch.testing.assert_close(module(x, causal=True), reference_windowed(module, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "model_cls, cfg_cls", [(TransformerLM, TransformerLMConfig), (CharTransformer, CharTransformerConfig)]
)
def test_decoder_only_models_take_the_span_and_return_its_cost(model_cls, cfg_cls):
    torch.manual_seed(5)
    cfg = cfg_cls(n_layers=2, d_model=16, n_heads=4, d_ff=32, max_positions=16, attention=SPAN)
    model = model_cls(cfg, V)
    x = tokens(2, 12)
    logits, aux = model(x, target=tokens(2, 12, seed=2))
    assert logits.shape == (2, 12, V) and "span_l1" in model.aux_term_names()
    # span_l1 = sum over layers of the mean span z = r * S
    torch.testing.assert_close(aux["span_l1"], torch.tensor(2 * 0.4 * 8.0))
    aux["span_l1"].backward()
    for layer in model.layers:
        layer.self_attn.span.span_param.data.fill_(1.7)
    model.after_update()
    assert all(float(layer.self_attn.span.span_param.detach().max()) == 1.0 for layer in model.layers)
    assert model.metrics()["span/max"] == 8.0


@pytest.mark.parametrize("span", ["fixed", "adaptive", "dynamic"])
def test_incremental_decoding_with_a_span_equals_full_recomputation(span):
    model = decoder_span_model(span=span, persistent_memory=2 if span == "adaptive" else 0)
    if span == "dynamic":  # spans that differ by position and head
        for layer in model.decoder_layers:
            torch.nn.init.normal_(layer.self_attn.span.predictor.weight, std=0.5)
    src = tokens(3, 6)
    src[1, 4:] = PAD
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 11, seed=3)], 1)  # longer than the 8-key span
    enc = model.encode(src)
    full = model.decode(prev, enc)
    steps, state = decode_incrementally(model, prev, enc)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-10)
    assert state.self_caches[0]["relative_k"].shape == (3, 4, 7, 4)  # max_span - 1 earlier positions kept


@pytest.mark.parametrize("shared", [False, True])
def test_beam_search_with_a_span_scores_equal_teacher_forced_rescoring(shared):
    model = decoder_span_model(seed=2)
    src = tokens(3, 6)
    src[1, 4:] = PAD
    config = GenerationConfig(beam=3, max_len_b=12, min_len=10, lenpen=1.0, shared_source_attention=shared)
    hyps = generate(model, src, config)
    for row, (best, *_) in enumerate(hyps):
        assert best.tokens.numel() > 8  # past the span: the cache must have been trimmed and reordered right
        prev = torch.cat([torch.tensor([model.decoder_start_idx]), best.tokens[:-1]])[None]
        logp = torch.log_softmax(model(src[row : row + 1], prev)[0], -1)[0]
        expected = logp.gather(1, best.tokens[:, None])[:, 0]
        torch.testing.assert_close(best.positional_scores, expected.to(best.positional_scores.dtype), rtol=0, atol=1e-6)


def test_relative_modules_are_counted_as_relative_attention():
    model = decoder_span_model()
    assert all(isinstance(layer.self_attn, RelativeAttention) for layer in model.decoder_layers)


@pytest.mark.parametrize(
    "preset, overrides, expected",
    [
        (
            "baselines/transformer_lm_text8_tiny",
            ["model.attention=mae", "model.attention.drop=2"],
            {"name": "mae", "drop": 2},
        ),
        (
            "combinations/t64_adaptive_span_text8_tiny",
            ["model.attention={span_ramp: 4, persistent_memory: 2}"],
            {
                "name": "adaptive_span",
                "span": "adaptive",
                "max_span": 0,
                "span_ramp": 4,
                "span_init": 0.0,
                "persistent_memory": 2,
            },
        ),
        ("combinations/t64_adaptive_span_text8_tiny", ["model.attention={name: mae}"], {"name": "mae"}),
        ("combinations/t64_adaptive_span_text8_tiny", ["model.attention=standard"], "standard"),
    ],
)
def test_command_line_overrides_choose_and_tune_attention(preset, overrides, expected):
    """A name replaces the choice, a mapping naming another variant replaces it, options merge and may be new."""
    cfg = compose_train_config(preset, overrides)
    value = cfg.model.attention
    assert (OmegaConf.to_container(value) if isinstance(value, DictConfig) else value) == expected


def test_char_transformer_takes_mae_with_a_causal_gate():
    torch.manual_seed(6)
    cfg = CharTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_ff=32, max_positions=16, dropout=0.0)
    cfg.attention = {"name": "mae", "gate_hidden": 8}
    model = CharTransformer(cfg, V).double().eval()
    assert all(type(layer.self_attn) is MAEAttention for layer in model.layers)
    for layer in model.layers:  # a decisive gate, so that a gate reading later positions would show
        torch.nn.init.normal_(layer.self_attn.mae_gate.fc2.weight, std=3.0)
    x = tokens(2, 10)
    changed = x.clone()
    changed[:, 6] = (changed[:, 6] - 2) % (V - 3) + 3
    a, b = model(x)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-12)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-6
    assert model.layers[0].self_attn.last_gate.shape == (2, 10, 4)  # one gate per position


def test_attention_terms_join_the_aux_heads_terms():
    """transformer_lm with T64's heads and a learned span: both kinds of terms, only the heads have parameters."""
    torch.manual_seed(7)
    cfg = TransformerLMConfig(n_layers=2, d_model=16, n_heads=4, d_ff=32, max_positions=16, attention=SPAN)
    cfg.aux_heads = AuxHeadsConfig(intermediate_heads=IntermediateHeads.separate, n_targets=2)
    model = TransformerLM(cfg, V)
    assert model.aux_term_names() == ["layer_1_nll", "target_2_nll", "span_l1"]
    assert model.aux_term_parameters("span_l1") == [] and model.aux_term_parameters("layer_1_nll")
    _, aux = model(tokens(2, 12), target=tokens(2, 12, seed=2))
    assert sorted(aux) == ["layer_1_nll", "span_l1", "target_2_nll"]
    torch.testing.assert_close(aux["span_l1"], torch.tensor(2 * 0.4 * 8.0))
