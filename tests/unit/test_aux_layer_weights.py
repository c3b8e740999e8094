"""The aux heads' per-layer weight rule: the T64 presets' weights equal the old per_layer_fraction schedules
at every step, and configs written in the old form still load (read as aux_layer_weights)."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from toolkit.aux_layer_weights import build_aux_weights
from toolkit.config.compose import compose_train_config, typed_train_config
from toolkit.errors import ConfigError

# the T64 presets with intermediate-layer terms, and their layer counts
PRESETS = {"t12_text8": 12, "t12_enwik8": 12, "t12_text8_no_multitarget": 12, "t64_text8": 64, "t64_enwik8": 64}
PRESETS["t64_tiny_text8"] = 8


def old_weight(kind: str, layer: int, n_layers: int, step: int, max_update: int) -> float:
    """What the schedule's removed per_layer_fraction option computed for the presets' layer entry
    {kind, value: 1.0, end_fraction: 0.5, per_layer_fraction: true, n_layers: n}: written out here, in the
    operations and order of that code (fraction = end_fraction * layer / n_layers; end = fraction * max_update)."""
    end = 0.5 * layer / n_layers * max_update
    if kind == "step_off":
        return 1.0 if step < end else 0.0
    return 1.0 * max(0.0, 1.0 - step / end) if end > 0 else 0.0  # linear_decay


def terms_of(name: str, n_layers: int) -> list[str]:
    layers = [f"layer_{l}_nll" for l in range(1, n_layers)]
    return layers + ([] if name == "t12_text8_no_multitarget" else ["target_2_nll"])


@pytest.mark.parametrize("kind", ["step_off", "linear_decay"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_give_the_old_weights_for_every_term_at_every_step(preset, kind):
    n_layers = PRESETS[preset]
    cfg = compose_train_config(preset, ["max_update=1280", f"aux_layer_weights.kind={kind}"])
    assert cfg.model.n_layers == n_layers
    weights = build_aux_weights(cfg)
    for term in terms_of(preset, n_layers):
        if term.startswith("layer_"):
            layer = int(term.split("_")[1])
            expected = [old_weight(kind, layer, n_layers, s, 1280) for s in range(1281)]
        else:
            expected = [0.5] * 1281
        assert [weights.weight(term, s) for s in range(1281)] == expected, term


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_at_their_own_max_update_cut_at_the_old_steps(preset):
    """At the real budget (millions of updates), every step next to every layer's cut-off."""
    n_layers = PRESETS[preset]
    cfg = compose_train_config(preset, [])
    max_update = cfg.max_update
    weights = build_aux_weights(cfg)
    for layer in range(1, n_layers):
        end = 0.5 * layer / n_layers * max_update
        for step in {0, int(end) - 1, int(end), int(end) + 1, max_update - 1}:
            assert weights.weight(f"layer_{layer}_nll", step) == old_weight(
                "step_off", layer, n_layers, step, max_update
            )


def old_form(preset: str, overrides: list[str], entry: dict) -> dict:
    """A preset's resolved config as a checkpoint of the old form stored it: the layer rule in aux_weights."""
    raw = OmegaConf.to_container(compose_train_config(preset, overrides), resolve=True, enum_to_str=True)
    raw.pop("aux_layer_weights")
    raw["aux_weights"] = {"layer_\\d+_nll": entry, **raw["aux_weights"]}
    return raw


OLD_ENTRY = {"kind": "step_off", "value": 1.0, "end_fraction": 0.5, "per_layer_fraction": True, "n_layers": 8}


def test_an_old_checkpoint_config_is_read_as_aux_layer_weights(caplog):
    with caplog.at_level(logging.WARNING):
        cfg = typed_train_config(old_form("t64_tiny_text8", [], OLD_ENTRY))
    assert "aux_weights.layer_\\d+_nll: per_layer_fraction/n_layers are deprecated" in caplog.text
    assert list(cfg.aux_weights) == ["target_\\d+_nll"]
    assert OmegaConf.to_container(cfg.aux_layer_weights, enum_to_str=True) == {
        "kind": "step_off",
        "value": 1.0,
        "start": 0,
        "end": None,
        "end_fraction": 0.5,
    }
    weights = build_aux_weights(cfg)
    for layer in range(1, 8):
        got = [weights.weight(f"layer_{layer}_nll", s) for s in range(cfg.max_update)]
        assert got == [old_weight("step_off", layer, 8, s, cfg.max_update) for s in range(cfg.max_update)]


def test_an_old_entry_that_never_cut_per_layer_stays_a_plain_schedule():
    entry = {"kind": "step_off", "value": 1.0, "end": 30, "per_layer_fraction": True, "n_layers": 8}
    cfg = typed_train_config(old_form("t64_tiny_text8", [], entry))
    assert cfg.aux_layer_weights is None
    assert OmegaConf.to_container(cfg.aux_weights["layer_\\d+_nll"]) == {"kind": "step_off", "value": 1.0, "end": 30}
    weights = build_aux_weights(cfg)
    assert [weights.weight("layer_3_nll", s) for s in (29, 30)] == [1.0, 0.0]


def test_an_old_entry_for_another_layer_count_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        typed_train_config(old_form("t64_tiny_text8", [], {**OLD_ENTRY, "n_layers": 12}))
    assert str(error.value) == (
        "aux_weights.layer_\\d+_nll.n_layers=12 differs from model.n_layers=8: the per-layer cut-offs follow "
        "model.n_layers now; drop aux_weights.layer_\\d+_nll.n_layers and per_layer_fraction (set "
        "aux_layer_weights instead)"
    )


def test_the_old_n_layers_override_is_accepted_when_it_is_the_model_s():
    cfg = compose_train_config("t64_tiny_text8", ["model.n_layers=4", "aux_weights.layer_\\d+_nll.n_layers=4"])
    assert list(cfg.aux_weights) == ["target_\\d+_nll"] and cfg.aux_layer_weights.end_fraction == 0.5
    with pytest.raises(ConfigError, match=r"^aux_weights.layer_\\d\+_nll.n_layers=8 differs from model.n_layers=4"):
        compose_train_config("t64_tiny_text8", ["model.n_layers=4", "aux_weights.layer_\\d+_nll.n_layers=8"])


def test_a_layer_term_weighed_twice_is_refused():
    with pytest.raises(ConfigError) as error:
        compose_train_config("t64_tiny_text8", ["aux_weights.layer_\\d+_nll=0.3"])
    assert str(error.value) == (
        "aux_weights.layer_\\d+_nll and aux_layer_weights both set the weight of layer_1_nll: keep one "
        "(aux_layer_weights is the per-layer rule, layer l of model.n_layers ending at end_fraction * l / n)"
    )


def test_the_rule_needs_end_fraction():
    with pytest.raises(ConfigError, match=r"^aux_layer_weights.end: layer l ends at end_fraction"):
        compose_train_config("t64_tiny_text8", ["aux_layer_weights.end=100"])
