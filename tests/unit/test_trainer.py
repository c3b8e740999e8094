"""Trainer mechanics: regex parameter groups with their own optimizers, BCD phases, non-finite losses."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.conftest import tiny_char_args
from toolkit.config.compose import compose_train_config
from toolkit.errors import DIVERGED_EXIT
from toolkit.train.run import single_process_trainer
from toolkit.train.trainer import Trainer


def make_trainer(data: Path, run_dir: Path, **overrides) -> Trainer:
    args = tiny_char_args(data, run_dir, **{"model.n_layers": 2, **overrides})
    cfg = compose_train_config("text8_char_tiny", args[1:])
    run_dir.mkdir(parents=True, exist_ok=True)
    return single_process_trainer(cfg, run_dir)


GROUP = "{params: 'layers\\.0\\.', optimizer: {name: sgd, lr: 0.5}, lr_scheduler: {name: constant}}"


def snapshot(trainer: Trainer, group: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.groups[group].params]


def test_regex_groups_get_their_own_optimizer(text8_small, tmp_path):
    trainer = make_trainer(text8_small, tmp_path, **{"param_groups.first": GROUP})
    assert type(trainer.groups["first"].optimizer).__name__ == "SGD"
    assert type(trainer.groups["main"].optimizer).__name__ == "Adam"
    assert all(n.startswith("layers.0.") for n in trainer.groups["first"].names)
    assert not any(n.startswith("layers.0.") for n in trainer.groups["main"].names)
    trainer.train_step()
    assert trainer.groups["first"].optimizer.param_groups[0]["lr"] == 0.5


def test_bcd_phases_touch_only_their_groups(text8_small, tmp_path):
    phases = "{unit: update, cycle: [{groups: [first], length: 2}, {groups: [main], length: 2}]}"
    trainer = make_trainer(text8_small, tmp_path, **{"param_groups.first": GROUP, "phases": phases})
    main_before, first_before = snapshot(trainer, "main"), snapshot(trainer, "first")
    for _ in range(2):  # G-like phase: only `first` moves
        trainer.train_step()
        assert all(p.grad is None for p in trainer.groups["main"].params)  # frozen: no gradient work
    assert all(torch.equal(a, b) for a, b in zip(main_before, snapshot(trainer, "main")))
    moved = [not torch.equal(a, b) for a, b in zip(first_before, snapshot(trainer, "first"))]
    assert sum(moved) >= len(moved) - 2  # all but the key biases (softmax-invariant: zero gradient)
    first_mid = snapshot(trainer, "first")
    for _ in range(2):  # then only `main` moves
        trainer.train_step()
    assert all(torch.equal(a, b) for a, b in zip(first_mid, snapshot(trainer, "first")))
    assert not all(torch.equal(a, b) for a, b in zip(main_before, snapshot(trainer, "main")))


def test_nonfinite_losses_skip_updates_then_stop(text8_small, tmp_path):
    trainer = make_trainer(text8_small, tmp_path, max_nonfinite=3, max_update=10)
    before = snapshot(trainer, "main")
    original = trainer.criterion.__call__

    def poisoned(model, batch, step):
        loss, size, logs = original(model, batch, step)
        return loss * float("nan"), size, {**logs, "loss": math.nan}

    trainer.criterion = poisoned
    assert trainer.train() == DIVERGED_EXIT
    assert trainer.step == 0 and trainer.nonfinite_total == 3
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(trainer, "main")))
    assert not (tmp_path / "checkpoint_last.pt").exists()  # nothing written over a good checkpoint


def test_gradient_accumulation_equals_larger_batch(text8_small, tmp_path):
    """update_freq=2 with batch 4 == one batch of 8 (same windows): gradients are token means either way."""
    big = make_trainer(text8_small, tmp_path / "big", **{"task.batch_size": 8, "model.dropout": 0.0})
    small = make_trainer(
        text8_small, tmp_path / "small", **{"task.batch_size": 4, "update_freq": 2, "model.dropout": 0.0}
    )
    small.model.load_state_dict(big.model.state_dict())
    # the accumulated run reads windows (epoch 1, index 0) and (1, 1); give the big run those same 8 windows
    windows = [small.task.train_batch(1, i) for i in (0, 1)]
    merged = {
        "net_input": {"tokens": torch.cat([w["net_input"]["tokens"] for w in windows])},
        "target": torch.cat([w["target"] for w in windows]),
        "ntokens": sum(w["ntokens"] for w in windows),
    }
    big.task.train_batch = lambda epoch, index: merged
    grads = {}
    for name, trainer in (("big", big), ("small", small)):
        optimizer = trainer.groups["main"].optimizer
        original_step = optimizer.step

        def capture(*args, _name=name, _optimizer=optimizer, _step=original_step, **kwargs):
            grads[_name] = [p.grad.clone() for g in _optimizer.param_groups for p in g["params"]]
            return _step(*args, **kwargs)

        optimizer.step = capture
        trainer.train_step()
    for a, b in zip(grads["big"], grads["small"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_checkpoint_sanity_factor_bounds_the_saved_weights_loss(text8_small, tmp_path):
    """A save is refused exactly when the new weights' loss on the last batch exceeds the factor times its loss
    before the update; the factor is the config's checkpoint_sanity_factor."""
    trainer = make_trainer(text8_small, tmp_path, **{"optimizer.lr": 20.0})
    trainer.train_step()
    before, after = trainer._check_losses()
    ratio = after / before
    assert ratio > 1  # lr 20 on Adam: this batch got worse (finitely)
    trainer.cfg.checkpoint_sanity_factor = max(1.0, ratio * 0.99)
    assert trainer.insane_reason() == (
        f"the loss of these weights on the last batch is {after:.4g} per token, over "
        f"{trainer.cfg.checkpoint_sanity_factor:g}x its {before:.4g} before the update "
        "(checkpoint_sanity_factor)"
    )
    trainer.cfg.checkpoint_sanity_factor = ratio * 1.01
    assert trainer.insane_reason() is None
