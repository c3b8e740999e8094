"""tk-train with the T64 tiny preset (auxiliary terms and their schedules in the log), then tk-eval's protocols;
a checkpoint written before the heads became one module and the per-layer rule left aux_weights still
evaluates and resumes."""

from __future__ import annotations

import json
import shutil

import torch

from tests.conftest import TINY_T64, read_log, train_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint

PRESET = "t64/t64_text8_tiny"


def test_t64_tiny_preset_trains_with_scheduled_aux_terms_and_evaluates(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # layer l of 4 stops at 8 * l / 8 = update l (aux_layer_weights)
    assert train_main(train_args(PRESET, text8_small, run_dir, save_interval=8, **TINY_T64)) == 0
    rows = read_log(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows:
        done = row["step"] - 1  # updates completed before this one: the step its weights are taken at
        weights = {k: v for k, v in row.items() if k.startswith("weight/layer_")}
        # every term's weight is logged; those switched off show 0
        assert sorted(weights) == [f"weight/layer_{l}_nll" for l in range(1, 4)], row
        on = [name for name, w in sorted(weights.items()) if w > 0]
        assert on == [f"weight/layer_{l}_nll" for l in range(done + 1, 4)], row
        assert all(weights[k] == 1.0 for k in on) and row["weight/target_2_nll"] == 0.5
        assert row["loss"] > row["nll"]  # the weighted auxiliary terms are on top of the reported nll
    capsys.readouterr()

    for protocol, stride in (("exact", 1), ("fast", 8)):
        code = eval_main(
            [
                f"checkpoint={run_dir / 'checkpoint_last.pt'}",
                "subset=test",
                f"task.eval_protocol={protocol}",
                "task.eval_max_tokens=200",
                "device=cpu",
            ]
        )
        assert code == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (metrics["protocol"], metrics["stride"], metrics["window"], metrics["tokens"]) == (
            protocol,
            stride,
            32,
            200,
        )
        assert 0 < metrics["bpc"] < 6


def test_a_checkpoint_of_the_old_layout_evaluates_and_resumes_as_today_s(text8_small, tmp_path, capsys):
    """The heads saved as `layer_heads.*` / `target_heads.*` and the per-layer rule stored in aux_weights as
    per_layer_fraction/n_layers (what tk-train wrote before): tk-eval reads it, and resuming from it gives
    bit for bit the run resumed from today's form of the same checkpoint."""
    now, old = tmp_path / "now", tmp_path / "old"
    first_half = train_args(PRESET, text8_small, now, max_update=3, save_interval=3, **TINY_T64)
    assert train_main(first_half) == 0
    shutil.copytree(now, old)
    state = load_checkpoint(old / "checkpoint_last.pt")
    state["model"] = {k.removeprefix("aux_heads."): v for k, v in state["model"].items()}
    config = state["config"]
    assert config.pop("aux_layer_weights") == {
        "kind": "step_off",
        "value": 1.0,
        "start": 0,
        "end": None,
        "end_fraction": 0.5,
    }
    entry = {"kind": "step_off", "value": 1.0, "end_fraction": 0.5, "per_layer_fraction": True, "n_layers": 4}
    config["aux_weights"] = {"layer_\\d+_nll": entry, **config["aux_weights"]}
    save_checkpoint(state, old / "checkpoint_last.pt")
    assert "layer_heads.0.1.weight" in load_checkpoint(old / "checkpoint_last.pt")["model"]
    capsys.readouterr()

    assert eval_main([f"checkpoint={old / 'checkpoint_last.pt'}", "subset=test", "task.eval_max_tokens=200"]) == 0
    assert 0 < json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpc"] < 6
    for run_dir in (now, old):
        assert train_main(train_args(PRESET, text8_small, run_dir, max_update=6, save_interval=6, **TINY_T64)) == 0
    resumed_now, resumed_old = (load_checkpoint(d / "checkpoint_last.pt") for d in (now, old))
    assert resumed_now["position"]["step"] == resumed_old["position"]["step"] == 6
    assert resumed_now["model"].keys() == resumed_old["model"].keys()
    for key, value in resumed_now["model"].items():
        assert torch.equal(value, resumed_old["model"][key]), key
    assert [r["loss"] for r in read_log(now)] == [r["loss"] for r in read_log(old)]
