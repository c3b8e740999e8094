"""Translation end to end: train -> tk-eval (BLEU, hypotheses file) -> tk-translate; exact resume."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.conftest import read_log, tiny_mt_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint


def test_train_eval_bleu_matches_sacrebleu_cli(iwslt_sample, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(tiny_mt_args(iwslt_sample, run)) == 0
    hyp = tmp_path / "hyp.txt"
    capsys.readouterr()
    assert (
        eval_main(
            [
                f"checkpoint={run / 'checkpoint_last.pt'}",
                "subset=test",
                f"task.hypotheses={hyp}",
                "task.bleu_protocol=sacrebleu",
                "device=cpu",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["sentences"] == 887 and len(hyp.read_text().splitlines()) == 887
    assert "tok:13a" in metrics["bleu_signature"]
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(iwslt_sample / "test.en.txt"), "-i", str(hyp), "-b"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert abs(metrics["bleu"] - float(cli.stdout.strip())) < 1e-9 or f"{metrics['bleu']:.1f}" == cli.stdout.strip()


def test_translation_resume_is_exact(iwslt_sample, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_mt_args(iwslt_sample, straight)) == 0
    assert train_main(tiny_mt_args(iwslt_sample, resumed, max_update=2)) == 0
    assert train_main(tiny_mt_args(iwslt_sample, resumed)) == 0
    a, b = load_checkpoint(straight / "checkpoint_last.pt"), load_checkpoint(resumed / "checkpoint_last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["loss"] for r in read_log(straight)] == [r["loss"] for r in read_log(resumed)]


def test_translate_stdin(iwslt_sample, tmp_path):
    run = tmp_path / "run"
    assert train_main(tiny_mt_args(iwslt_sample, run, max_update=1)) == 0
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.cli.translate", f"checkpoint={run / 'checkpoint_last.pt'}", "device=cpu"],
        input="Das ist gut.\nDanke.\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
