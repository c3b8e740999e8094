"""tk-train with the T64 tiny preset (auxiliary terms and their schedules in the log), then tk-eval's protocols."""

from __future__ import annotations

import json

from tests.conftest import read_log
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main


def test_t64_tiny_preset_trains_with_scheduled_aux_terms_and_evaluates(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = {
        "data": text8_small,
        "run_dir": run_dir,
        "max_update": 8,
        "log_interval": 1,
        "validate_interval": 0,
        "save_interval": 8,
        "final_subset": "null",
        "tensorboard": "false",
        "progress": "plain",
        "device": "cpu",
        "model.n_layers": 4,  # layer l of 4 stops at 8 * l / 8 = update l (aux_layer_weights)
        "model.d_model": 16,
        "model.n_heads": 2,
        "model.d_ff": 32,
        "model.max_positions": 32,
        "task.tokens_per_sample": 32,
        "task.batch_size": 4,
        "task.eval_stride": 8,
    }
    assert train_main(["config=t64_tiny_text8", *(f"{k}={v}" for k, v in args.items())]) == 0
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
