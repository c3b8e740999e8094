"""MAE in the encoder-decoder Transformer: slots, uniform gate == standard attention, causal gate, incremental
and beam-search decoding, gate metrics, and the presets' parameter counts (dry-run build)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import decode_incrementally
from toolkit.errors import ConfigError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.models.transformer import TransformerConfig, TransformerModel
from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.mae import MAEConfig, set_mae_mode
from toolkit.modules.attention.mae_gate import EXPERT_KEY, gate_entropy
from toolkit.registry import MODELS

BOS, PAD, EOS, V = 0, 1, 2, 37
TASK = SimpleNamespace(vocab_size=V, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS)


def tiny_model(seed: int = 0, **overrides) -> TransformerModel:
    base = dict(encoder_layers=2, decoder_layers=2, d_model=16, ffn_dim=32, n_heads=4, dropout=0.0)
    torch.manual_seed(seed)
    model = MODELS.get("transformer").builder.build(TransformerConfig(**{**base, **overrides}), TASK)
    return model.double().eval()


def mae_model(seed: int = 0, drop: int = 1, uniform: bool = False, **overrides) -> TransformerModel:
    return tiny_model(seed, attention="mae", mae=MAEConfig(drop=drop, gate_hidden=8, uniform=uniform), **overrides)


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, V, (b, t), generator=torch.Generator().manual_seed(seed))


def batch():
    src = tokens(3, 6)
    src[1, 4:] = PAD
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 6, seed=3)], 1)
    return src, prev


def test_slots_choose_mae_modules_and_unknown_slots_are_one_line_errors():
    model = mae_model(mae_slots=["encoder_self", "encoder_decoder"])
    assert sorted(model.mae_modules()) == ["encoder_decoder.0", "encoder_decoder.1", "encoder_self.0", "encoder_self.1"]
    assert type(model.decoder_layers[0].self_attn) is MultiheadAttention
    assert model.encoder_layers[0].self_attn.causal_gate is False
    assert model.decoder_layers[1].cross_attn.causal_gate is True
    assert len(mae_model().mae_modules()) == 6 and tiny_model().mae_modules() == {}
    with pytest.raises(ConfigError) as error:
        mae_model(mae_slots=["decoder_cross"])
    assert str(error.value) == (
        "model.mae_slots: unknown slot 'decoder_cross' (did you mean: decoder_self, encoder_self?); "
        "valid: encoder_self, decoder_self, encoder_decoder"
    )


@pytest.mark.parametrize("drop", [1, 2])
def test_uniform_gate_equals_the_standard_model_with_the_same_weights(drop):
    mae, plain = mae_model(seed=0, drop=drop), tiny_model(seed=5)
    for module in mae.mae_modules().values():  # zero last gate layer: softmax of zeros = uniform
        torch.nn.init.zeros_(module.mae_gate.fc2.weight)
        torch.nn.init.zeros_(module.mae_gate.fc2.bias)
    missing, unexpected = plain.load_state_dict(mae.state_dict(), strict=False)
    assert missing == [] and unexpected and all(".mae_gate." in k for k in unexpected)
    src, prev = batch()
    torch.testing.assert_close(mae(src, prev)[0], plain(src, prev)[0], rtol=0, atol=1e-12)


def test_gate_parameters_change_the_output_when_not_uniform():
    src, prev = batch()
    mae = mae_model()
    before = mae(src, prev)[0]
    for module in mae.mae_modules().values():
        torch.nn.init.normal_(module.mae_gate.fc2.weight, std=3.0)
    assert (mae(src, prev)[0] - before).abs().max() > 1e-3


@pytest.mark.parametrize("slots", [None, ["decoder_self"], ["encoder_decoder"]])
def test_changing_a_later_target_token_changes_no_earlier_output(slots):
    model = mae_model(**({} if slots is None else {"mae_slots": slots}))
    src, prev = batch()
    changed = prev.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 3) % (V - 3) + 3
    a, b = model(src, prev)[0], model(src, changed)[0]
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-6


@pytest.mark.parametrize("pre_ln", [False, True])
def test_incremental_decoding_equals_full_recomputation(pre_ln):
    model = mae_model(pre_ln=pre_ln)
    src, prev = batch()
    enc = model.encode(src)
    full = model.decode(prev, enc)
    torch.testing.assert_close(decode_incrementally(model, prev, enc)[0], full, rtol=0, atol=1e-10)


def test_beam_reordering_without_static_copies_moves_the_gate_state():
    """static=False (beams of one sentence) leaves keys/values alone but must reorder MAE's running sums."""
    model = mae_model()
    src = tokens(1, 5).expand(3, -1)  # three beams of one sentence
    prev = torch.cat([torch.full((3, 1), BOS), tokens(3, 4, seed=4)], 1)
    state = model.init_decoder_state(model.encode(src))
    model.decode(prev[:, :3], None, state)
    order = torch.tensor([2, 0, 0])
    model.reorder_decoder_state(state, order, static=False)
    step = model.decode(prev[order, 3:4], None, state)
    expected = model.decode(prev[order, :4], model.encode(src))[:, -1:]
    torch.testing.assert_close(step, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shared", [False, True])
def test_beam_search_scores_equal_teacher_forced_rescoring(shared):
    model = mae_model(seed=2)
    for module in model.mae_modules().values():  # a decisive gate, so a wrong gate state would show
        torch.nn.init.normal_(module.mae_gate.fc2.weight, std=3.0)
    src, _ = batch()
    hyps = generate(model, src, GenerationConfig(beam=3, max_len_b=6, lenpen=1.0, shared_source_attention=shared))
    for row, (best, *_) in enumerate(hyps):
        prev = torch.cat([torch.tensor([model.decoder_start_idx]), best.tokens[:-1]])[None]
        logp = torch.log_softmax(model(src[row : row + 1], prev)[0], -1)[0]
        expected = logp.gather(1, best.tokens[:, None])[:, 0]
        torch.testing.assert_close(best.positional_scores, expected.to(best.positional_scores.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("uniform", [False, True])
def test_random_expert_decoding_uses_one_expert_per_sentence_for_all_its_beams(uniform):
    model = mae_model(uniform=uniform)
    assert set_mae_mode(model, "random_expert") == 6
    src, prev = batch()
    torch.manual_seed(3)
    state = model.init_decoder_state(model.encode(src))
    model.reorder_decoder_state(state, torch.arange(3).repeat_interleave(4))  # 3 sentences -> 4 beams each
    model.decode(prev[:, :1].repeat_interleave(4, 0), None, state)
    for cache in state.self_caches + state.cross_caches:
        experts = cache[EXPERT_KEY].view(3, 4)
        assert torch.equal(experts, experts[:, :1].expand(-1, 4))
    # the next step equals a recomputation of both tokens at once with the same experts
    step = model.decode(prev[:, 1:2].repeat_interleave(4, 0), None, state)
    fresh = model.init_decoder_state(state.encoder_out)  # the same encoder experts too
    for new, old in zip(fresh.self_caches + fresh.cross_caches, state.self_caches + state.cross_caches):
        new[EXPERT_KEY] = old[EXPERT_KEY]
    full = model.decode(prev[:, :2].repeat_interleave(4, 0), None, fresh)
    torch.testing.assert_close(step, full[:, -1:], rtol=0, atol=1e-10)


def test_metrics_are_the_gate_statistics_of_the_last_forward():
    model = mae_model()
    src, prev = batch()
    prev[2, 5:] = PAD
    model(src, prev)
    metrics = model.metrics()
    assert len(metrics) == 6 * 3
    enc = model.encoder_layers[1].self_attn.last_gate  # (B, E): one gate per sequence
    assert metrics["mae/encoder_self.1/entropy"] == pytest.approx(float(-(enc * enc.log()).sum(-1).mean()))
    dec = model.decoder_layers[0].cross_attn.last_gate  # (B, T, E): padded target rows left out
    rows = dec[~prev.eq(PAD)]
    assert metrics["mae/encoder_decoder.0/entropy"] == pytest.approx(float(-(rows * rows.log()).sum(-1).mean()))
    assert metrics["mae/encoder_decoder.0/top_usage"] == pytest.approx(float(rows.mean(0).max()))
    assert metrics["mae/decoder_self.0/usage_entropy"] == pytest.approx(
        float(gate_entropy(model.decoder_layers[0].self_attn.last_gate[~prev.eq(PAD)].mean(0)))
    )
    assert tiny_model().metrics() == {}
    uniform = mae_model(uniform=True)
    uniform(src, prev)
    assert uniform.metrics() == {} and uniform.parameter_breakdown() == {"gate_parameters": 0}


def test_uni_mae_trains_one_expert_per_module_and_evaluates_as_plain_attention():
    uniform, plain = mae_model(uniform=True), tiny_model(seed=7)
    plain.load_state_dict(uniform.state_dict())
    src, prev = batch()
    torch.testing.assert_close(uniform(src, prev)[0], plain(src, prev)[0], rtol=0, atol=0)
    uniform.train()
    uniform(src, prev)
    experts = [m.last_expert for m in uniform.mae_modules().values()]
    assert all(e is not None and e.dim() == 0 for e in experts)


def dry_run_params(preset: str) -> dict:
    """What `tk-train config=PRESET dry_run=true` counts, built on the meta device (no memory, no init time)."""
    from toolkit.config.compose import compose_train_config
    from toolkit.train.setup import build_run, parameter_summary

    with torch.device("meta"):
        return parameter_summary(build_run(compose_train_config(preset, [])).model)


def test_presets_count_base_plus_the_gates():
    base = dry_run_params("base_wmt14")["parameters"]
    assert base == 60_522_496
    for preset, experts in (("mae7_wmt14", 8), ("mae6_wmt14", 28)):
        counts = dry_run_params(preset)
        per_gate = 512 * 64 + 64 + 64 * experts + experts  # d_model -> gate_hidden 64 -> experts
        assert counts["gate_parameters"] == 18 * per_gate  # 6 encoder self + 6 decoder self + 6 cross
        assert counts["parameters"] == base + counts["gate_parameters"]
    assert dry_run_params("mae7_wmt14")["parameters"] / base - 1 < 0.01
    assert dry_run_params("uni_mae7_wmt14") == {"parameters": base, "gate_parameters": 0}
    assert dry_run_params("base_iwslt14")["parameters"] == dry_run_params("uni_mae6_iwslt14")["parameters"]
