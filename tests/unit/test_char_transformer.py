"""char_transformer (T64): auxiliary terms, their schedules and gradients, bpc, evaluation protocols, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from toolkit.aux_layer_weights import build_aux_weights, layer_schedules
from toolkit.aux_weights import AuxWeights, typed_schedule
from toolkit.config.compose import compose_train_config
from toolkit.criterions.cross_entropy import CrossEntropyCriterion
from toolkit.errors import ConfigError
from toolkit.eval.lm_scoring import score_stream
from toolkit.logging.token_metrics import summarize
from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig
from toolkit.modules.aux_heads import k_ahead_labels
from toolkit.tasks.char_lm import CharLMConfig, CharLMTask, eval_stride

V = 11


def tiny(**overrides) -> CharTransformer:
    torch.manual_seed(0)
    cfg = dict(n_layers=3, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=32, n_targets=3)
    cfg.update(overrides)
    return CharTransformer(CharTransformerConfig(**cfg), V).eval()


def chunk(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    """(B, T + 1) characters: inputs are [:, :-1], next-character targets [:, 1:]."""
    return torch.randint(0, V, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


class FakeTask:
    pad_idx = None


def batch_of(c: torch.Tensor) -> dict:
    return {"net_input": {"tokens": c[:, :-1]}, "target": c[:, 1:], "ntokens": c[:, 1:].numel()}


# ---- schedules (through the presets' aux_weights) --------------------------------------------------------
def test_intermediate_losses_stop_at_l_over_2n_of_training():
    cfg = compose_train_config("t12_text8", ["max_update=2400", "data=null"])
    weights = build_aux_weights(cfg)
    for layer in (1, 6, 11):
        cut = 2400 * layer // 24  # l / (2n) of max_update, n = 12
        assert weights.weight(f"layer_{layer}_nll", cut - 1) == 1.0
        assert weights.weight(f"layer_{layer}_nll", cut) == 0.0
    assert [weights.weight("target_2_nll", s) for s in (0, 1199, 2399)] == [0.5, 0.5, 0.5]


def test_linear_decay_shape_reaches_zero_at_the_same_point():
    cfg = compose_train_config("t64_text8", ["max_update=12800", "aux_layer_weights.kind=linear_decay"])
    weights = build_aux_weights(cfg)
    # layer 32 of 64 ends at 32 / 128 * 12800 = 3200
    assert [weights.weight("layer_32_nll", s) for s in (0, 1600, 2400, 3200, 5000)] == [1.0, 0.5, 0.25, 0.0, 0.0]
    assert weights.weight("layer_1_nll", 99) == pytest.approx(0.01)


# ---- labels and terms ------------------------------------------------------------------------------------
def test_k_ahead_labels_are_the_characters_k_ahead_of_each_input_position():
    c = chunk(length=9)
    tokens, target = c[:, :-1], c[:, 1:]
    labels = k_ahead_labels(target, [1, 2, 4])
    for i, k in enumerate((1, 2, 4)):
        for t in range(tokens.size(1)):
            expected = c[:, t + k] if t + k <= tokens.size(1) else torch.full((2,), -100)
            assert torch.equal(labels[i, :, t], expected), (k, t)


def test_aux_terms_equal_independent_computations():
    model = tiny()
    c = chunk()
    tokens, target = c[:, :-1], c[:, 1:]
    logits, aux = model(tokens, target=target)
    assert sorted(aux) == ["layer_1_nll", "layer_2_nll", "target_2_nll", "target_3_nll"]
    # replay the layers by hand
    t = tokens.size(1)
    x = model.embed(tokens) * math.sqrt(16)
    states = []
    for i, layer in enumerate(model.layers):
        x = layer(x + model.positions[i, :t], causal=True)
        states.append(x)
    hidden = model.final_norm(x)
    assert torch.allclose(logits, model.output(hidden), atol=1e-6)
    for l in (1, 2):
        norm, proj = model.aux_heads.layer_heads[l - 1]
        head = F.linear(F.layer_norm(states[l - 1], (16,), norm.weight, norm.bias), proj.weight, proj.bias)
        assert aux[f"layer_{l}_nll"].item() == pytest.approx(
            F.cross_entropy(head.reshape(-1, V), target.reshape(-1)).item(), rel=1e-5
        )
    for k in (2, 3):
        head = F.linear(hidden, model.aux_heads.target_heads[k - 2].weight, model.aux_heads.target_heads[k - 2].bias)
        valid = t - k + 1  # positions with a character k ahead inside the window
        expected = F.cross_entropy(head[:, :valid].reshape(-1, V), c[:, k : k + valid].reshape(-1))
        assert aux[f"target_{k}_nll"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_shared_heads_use_the_final_norm_and_projection():
    model = tiny(intermediate_heads="shared", n_targets=1)
    c = chunk()
    _, aux = model(c[:, :-1], target=c[:, 1:], active_aux={"layer_2_nll"})
    x = model.embed(c[:, :-1]) * 4.0
    for i in range(2):
        x = model.layers[i](x + model.positions[i, :12], causal=True)
    expected = F.cross_entropy(model.output(model.final_norm(x)).reshape(-1, V), c[:, 1:].reshape(-1))
    assert list(aux) == ["layer_2_nll"] and aux["layer_2_nll"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_positions_first_layer_only_and_no_heads():
    model = tiny(positions="first_layer", intermediate_heads="none", n_targets=1)
    assert model.positions.shape == (1, 32, 16) and model.aux_term_names() == []
    c = chunk()
    assert model(c[:, :-1], target=c[:, 1:])[1] == {}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"positions": "all"}, "model.positions: 'all' (valid: every_layer, first_layer, rotary)"),
        ({"intermediate_heads": "own"}, "model.intermediate_heads: 'own' (valid: separate, shared, none)"),
        ({"n_targets": 0}, "model.n_targets must be >= 1, got 0"),
    ],
)
def test_config_errors(overrides, message):
    """Fixed choices are Enums, refused when the config is composed; the rest when the model is built."""
    with pytest.raises(ConfigError) as error:
        cfg = compose_train_config("t64_tiny_text8", [f"model.{key}={value}" for key, value in overrides.items()])
        CharTransformer(cfg.model, 27)
    assert str(error.value) == message


# ---- gradients and bpc through the criterion -------------------------------------------------------------
def criterion_for(raw: dict, max_update: int = 100, n_layers: int = 3) -> CrossEntropyCriterion:
    """The criterion with T64's per-layer weights for the layers (layer l of 3 stops at l/6 of training)."""
    layers = layer_schedules(typed_schedule({"kind": "step_off", "end_fraction": 0.5}, "aux_layer_weights"), n_layers)
    return CrossEntropyCriterion(None, FakeTask(), AuxWeights(OmegaConf.create(raw), max_update, layers))


T64_WEIGHTS = {"target_\\d+_nll": {"kind": "constant", "value": 0.5}}


def test_zero_weighted_terms_send_no_gradient_into_their_heads():
    model = tiny().train()
    criterion = criterion_for(T64_WEIGHTS)  # layer 1 stops at step 16, layer 2 at 33 (of 100)
    loss, _, logs = criterion(model, batch_of(chunk()), step=20)
    loss.backward()
    assert "aux/layer_1_nll" not in logs and logs["weight/layer_2_nll"] == 1.0
    assert all(p.grad is None for p in model.aux_heads.layer_heads[0].parameters())
    assert all(torch.count_nonzero(p.grad) > 0 for p in model.aux_heads.layer_heads[1].parameters())
    model.zero_grad(set_to_none=True)
    criterion_for({**T64_WEIGHTS, "target_\\d+_nll": 0.0})(model, batch_of(chunk()), step=50)[0].backward()
    heads = [*model.aux_heads.layer_heads.parameters(), *model.aux_heads.target_heads.parameters()]
    assert len(heads) == 12 and all(p.grad is None for p in heads)
    assert model.output.weight.grad is not None


def test_loss_is_nll_sum_plus_weighted_aux_and_bpc_is_the_final_layer_next_char_loss():
    model = tiny()
    c = chunk()
    loss, size, logs = criterion_for(T64_WEIGHTS)(model, batch_of(c), step=0)
    hidden = c[:, :-1]
    x = model.embed(hidden) * 4.0
    for i, layer in enumerate(model.layers):
        x = layer(x + model.positions[i, :12], causal=True)
    final_nll = F.cross_entropy(model.output(model.final_norm(x)).reshape(-1, V), c[:, 1:].reshape(-1), reduction="sum")
    assert size == 24 and logs["nll_loss"] == pytest.approx(final_nll.item(), rel=1e-5)
    assert summarize(logs)["bpc"] == pytest.approx(final_nll.item() / 24 / math.log(2), rel=1e-5)
    aux = sum(
        w * logs[f"aux/{n}"]
        for n, w in (("layer_1_nll", 1), ("layer_2_nll", 1), ("target_2_nll", 0.5), ("target_3_nll", 0.5))
    )
    assert loss.item() == pytest.approx(final_nll.item() + 24 * aux, rel=1e-5)


# ---- evaluation protocols --------------------------------------------------------------------------------
def test_protocol_strides():
    assert [eval_stride("exact", 0, 128), eval_stride("fast", 0, 128), eval_stride("fast", 64, 128)] == [1, 32, 64]
    assert [eval_stride("windows", 0, 128), eval_stride("windows", 16, 128)] == [128, 16]
    with pytest.raises(ConfigError, match=r"^task.eval_protocol: 'quick' \(valid: windows, exact, fast, stream\)$"):
        compose_train_config("t64_tiny_text8", ["task.eval_protocol=quick"])


def test_exact_protocol_scores_each_character_with_a_full_window():
    model = tiny()
    text = np.random.default_rng(0).integers(0, V, 40)
    nll, count = score_stream(lambda x: model(x)[0], text, window=8, stride=1, batch_size=7)
    data = torch.from_numpy(text)
    expected = F.cross_entropy(model(data[None, :8])[0][0], data[1:9], reduction="sum").item()  # first window: all
    for i in range(8, 39):  # target i + 1 predicted from the 8 characters ending at i
        logits = model(data[None, i - 7 : i + 1])[0][0, -1]
        expected += F.cross_entropy(logits[None], data[i + 1 : i + 2]).item()
    assert count == 39 and nll == pytest.approx(expected, rel=1e-5)


def test_exact_and_fast_agree_when_the_window_covers_the_text(text8_small):
    model = CharTransformer(
        CharTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=64), 27
    ).eval()
    results = {}
    for protocol in ("exact", "fast", "windows"):
        cfg = OmegaConf.structured(CharLMConfig(tokens_per_sample=64, eval_protocol=protocol, eval_max_tokens=60))
        results[protocol] = CharLMTask(cfg, str(text8_small), seed=1).evaluate(model, "test", torch.device("cpu"))
    data = torch.from_numpy(np.asarray(CharLMTask(cfg, str(text8_small), 1).splits["test"][:61], dtype=np.int64))
    expected = F.cross_entropy(model(data[None, :-1])[0][0], data[1:]).item() / math.log(2)
    for protocol, metrics in results.items():
        assert metrics["protocol"] == protocol and metrics["tokens"] == 60
        assert metrics["bpc"] == pytest.approx(expected, rel=1e-5)
    assert (results["exact"]["stride"], results["fast"]["stride"], results["fast"]["context"]) == (1, 16, 48)


# ---- presets at the paper's scale ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, paper", [("t12_text8", 44e6), ("t64_text8", 235e6), ("t12_enwik8", 44e6), ("t64_enwik8", 235e6)]
)
def test_paper_presets_parameter_counts_within_10_percent(preset, paper):
    cfg = compose_train_config(preset, ["data=null"])
    with torch.device("meta"):  # no memory, no initialisation cost
        model = CharTransformer.build(cfg.model, type("NoData", (), {"vocab_size": cfg.task.vocab_size})())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / paper - 1) < 0.10, count
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.99
