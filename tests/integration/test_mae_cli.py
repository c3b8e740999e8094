"""MAE end to end: a tiny MAE-7 run with block coordinate descent by updates, tk-eval BLEU, FTG fine-tuning,
and the gate analysis of its checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import read_log, tiny_mt_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.errors import ConfigError
from toolkit.modules.attention.mae_gate import GATE_PARAM_PATTERN
from toolkit.train.checkpoint import load_checkpoint

GATE = re.compile(GATE_PARAM_PATTERN)
# 1+1 layers, d32, 4 heads (experts of 3), a small gate
MAE_ARGS = {"model.n_heads": 4, "model.mae.gate_hidden": 8, "save_interval": 1, "keep_interval_checkpoints": 10}
PHASES = {"phases.cycle.0.length": 2, "phases.cycle.1.length": 1}  # 2 F-updates, then 1 G-update


def mae_args(data: Path, run: Path, preset: str = "mae7_iwslt14_tiny", **overrides: object) -> list[str]:
    phases = PHASES if preset == "mae7_iwslt14_tiny" else {}
    args = tiny_mt_args(data, run, **{**MAE_ARGS, **phases, **overrides})
    return [f"config={preset}"] + args[1:]


def changed(a: dict, b: dict) -> set[str]:
    return {name for name in a if not torch.equal(a[name], b[name])}


@pytest.fixture(scope="module")
def mae_run(iwslt_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("mae7") / "run"
    assert train_main(mae_args(iwslt_sample, run, max_update=3)) == 0
    return run


def test_bcd_phases_update_only_their_groups_and_gate_metrics_are_logged(mae_run):
    states = [load_checkpoint(mae_run / f"checkpoint_{step}.pt")["model"] for step in (1, 2, 3)]
    gate = {name for name in states[0] if GATE.search(name)}
    assert len(gate) == 3 * 4  # encoder self, decoder self, cross: fc1/fc2 weight/bias each
    assert changed(states[0], states[1]) and not changed(states[0], states[1]) & gate  # F-update: no gate
    assert changed(states[1], states[2]) == gate  # G-update: the gate only
    logs = read_log(mae_run)
    assert len(logs) == 3
    for slot in ("encoder_self.0", "decoder_self.0", "encoder_decoder.0"):
        entropy = logs[-1][f"mae/{slot}/entropy"]
        assert 0.0 < entropy <= torch.log(torch.tensor(4.0)).item() + 1e-6


def test_eval_bleu_of_the_mae_checkpoint(mae_run, capsys):
    capsys.readouterr()
    assert (
        eval_main(
            [
                f"checkpoint={mae_run / 'checkpoint_last.pt'}",
                "subset=test",
                "device=cpu",
                "task.generation.beam=2",
                "task.generation.max_len_b=4",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["bleu"] <= 100.0


def test_ftg_fine_tuning_changes_only_the_gate(mae_run, iwslt_sample, tmp_path):
    init = mae_run / "checkpoint_last.pt"
    tuned = tmp_path / "ftg"
    args = mae_args(iwslt_sample, tuned, preset="nobcd_mae7_iwslt14_tiny", max_update=2)
    assert train_main(args + [f"init_from={init}", f"train_only={GATE_PARAM_PATTERN}"]) == 0
    before, after = load_checkpoint(init)["model"], load_checkpoint(tuned / "checkpoint_last.pt")["model"]
    assert changed(before, after) == {name for name in before if GATE.search(name)}


def test_gate_analysis_writes_png_and_the_mean_gate_json(mae_run, tmp_path):
    from toolkit.eval.gate_analysis import analyze_gates, load_run

    out, checkpoint = tmp_path / "gates", str(mae_run / "checkpoint_last.pt")
    report = analyze_gates(checkpoint, "valid", str(out), {"max_sentences": 12, "batch_size": 5})
    assert (out / "gates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "gates.json").read_text())
    assert saved["layers"] == ["encoder_self.0", "decoder_self.0", "encoder_decoder.0"]
    assert saved["experts"] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert saved["mean_gate"] == report["mean_gate"] and saved["sentences"] == 12
    # independently: one unpadded sentence at a time, the gate rows of every module averaged
    task, model, _ = load_run(checkpoint, None, "cpu")
    rows: dict[str, list] = {name: [] for name in saved["layers"]}
    for i in range(12):
        src, tgt = (torch.tensor(np.array(d[i]), dtype=torch.long) for d in task.datasets["valid"])
        src = torch.cat([src, torch.tensor([task.eos_idx])])[None]
        prev = torch.cat([torch.tensor([model.decoder_start_idx]), tgt])[None]
        with torch.no_grad():
            model(src, prev)
        for name, module in model.mae_modules().items():
            rows[name].append(module.last_gate.reshape(-1, 4).double())
    expected = [torch.cat(rows[name]).mean(0).tolist() for name in saved["layers"]]
    np.testing.assert_allclose(saved["mean_gate"], expected, rtol=0, atol=1e-6)


def test_gate_analysis_command_line_and_errors(mae_run, tmp_path, capsys):
    from toolkit.eval.gate_analysis import run

    out = tmp_path / "cli"
    assert run([f"checkpoint={mae_run / 'checkpoint_last.pt'}", f"output={out}", "max_sentences=3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sentences"] == 3 and summary["png"] == str(out / "gates.png") and (out / "gates.json").is_file()
    with pytest.raises(ConfigError, match="^unknown subset 'dev' \\(valid: train, valid, test\\)$"):
        run([f"checkpoint={mae_run / 'checkpoint_last.pt'}", f"output={tmp_path / 'bad'}", "subset=dev"])
    assert not (tmp_path / "bad").exists()
