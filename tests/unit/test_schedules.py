"""Step-indexed schedules: auxiliary-loss weights, block-coordinate-descent phases, lr schedules."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from toolkit.aux_layer_weights import layer_schedules
from toolkit.aux_weights import AuxWeights, typed_schedule
from toolkit.errors import ConfigError
from toolkit.registry import LR_SCHEDULERS
from toolkit.train import lr_schedulers  # noqa: F401 - registers the schedules
from toolkit.train.schedules import active_groups, validate_phases


def test_weight_schedules_at_chosen_steps():
    weights = AuxWeights(
        {
            "off": {"kind": "step_off", "value": 2.0, "end": 10},
            "decay": {"kind": "linear_decay", "value": 1.0, "end_fraction": 0.5},
            "warm": {"kind": "linear_warmup", "value": 1.0, "start": 10, "end": 20},
            "plain": 0.5,
        },
        max_update=100,
        named=layer_schedules(typed_schedule({"kind": "step_off", "end_fraction": 0.5}, "aux_layer_weights"), 4),
    )
    assert [weights.weight("off", s) for s in (0, 9, 10, 50)] == [2.0, 2.0, 0.0, 0.0]
    assert [weights.weight("decay", s) for s in (0, 25, 50, 80)] == [1.0, 0.5, 0.0, 0.0]
    assert [weights.weight("warm", s) for s in (0, 10, 15, 20, 30)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    # layer l of n stops at l / (2n) of training: 12.5, 25, 37.5 updates for l = 1, 2, 3 of 4
    assert [weights.weight("layer_1_nll", s) for s in (12, 13)] == [1.0, 0.0]
    assert [weights.weight("layer_2_nll", s) for s in (24, 25)] == [1.0, 0.0]
    assert [weights.weight("layer_3_nll", s) for s in (37, 38)] == [1.0, 0.0]
    assert weights.weight("plain", 99) == 0.5
    assert weights.weight("unnamed", 0) is None


def test_bad_schedule_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="aux_weights.x.kind: 'wiggle'"):
        AuxWeights({"x": {"kind": "wiggle"}}, 10)
    with pytest.raises(ConfigError, match="aux_weights.x"):
        AuxWeights({"x": {"vlaue": 1.0}}, 10)


def test_phase_cycle_by_update_and_epoch():
    phases = OmegaConf.create(
        {"unit": "update", "cycle": [{"groups": ["gate"], "length": 2}, {"groups": ["main"], "length": 3}]}
    )
    assert [active_groups(phases, s, 1, ["gate", "main"]) for s in range(6)] == [["gate"]] * 2 + [["main"]] * 3 + [
        ["gate"]
    ]
    by_epoch = OmegaConf.create(
        {"unit": "epoch", "cycle": [{"groups": ["main"], "length": 4}, {"groups": ["gate"], "length": 1}]}
    )
    assert [active_groups(by_epoch, 0, e, ["gate", "main"])[0] for e in range(1, 7)] == ["main"] * 4 + ["gate", "main"]
    empty = OmegaConf.create({"unit": "update", "cycle": []})
    assert active_groups(empty, 7, 1, ["gate", "main"]) == ["gate", "main"]
    with pytest.raises(ConfigError, match="unknown parameter group 'gates'"):
        validate_phases(
            OmegaConf.create({"unit": "update", "cycle": [{"groups": ["gates"], "length": 1}]}), ["gate", "main"]
        )


@pytest.mark.parametrize(
    "name, options, step, expected",
    [
        ("constant", {"warmup_updates": 10}, 4, 0.5),
        ("constant", {"warmup_updates": 10}, 50, 1.0),
        ("inverse_sqrt", {"warmup_updates": 100}, 99, 1.0),
        ("inverse_sqrt", {"warmup_updates": 100}, 399, 0.5),
        ("cosine", {"min_lr_scale": 0.0}, 50, 0.5),
        ("cosine", {"min_lr_scale": 0.1}, 100, 0.1),
        ("linear", {"end_lr_scale": 0.0}, 25, 0.75),
    ],
)
def test_lr_schedules(name, options, step, expected):
    entry = LR_SCHEDULERS.get(name)
    cfg = OmegaConf.merge(OmegaConf.structured(entry.config_cls), options)
    assert math.isclose(entry.builder(cfg, step, 100), expected, rel_tol=1e-9)
