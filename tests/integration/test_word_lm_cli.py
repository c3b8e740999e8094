"""Word LM end to end: the shipped sample through tk-train and tk-eval (subprocesses), blocks and streamed;
the WT103 preset's dry run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.cli.preprocess import main as preprocess_main
from toolkit.cli.train import main as train_main


def run(module: str, *args: object) -> subprocess.CompletedProcess:
    # one thread: these tiny models are faster without OpenMP synchronisation, above all on a busy machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", f"toolkit.cli.{module}", *map(str, args)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wt2_sample(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("wt2") / "bin"
    assert preprocess_main(["config=wikitext2_sample", f"destdir={data}"]) == 0
    return data


def test_train_and_eval_on_the_shipped_sample(wt2_sample: Path, tmp_path: Path):
    data, run_dir = wt2_sample, tmp_path / "run"
    meta = json.loads((data / "meta.json").read_text())
    tiny = [
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.max_positions=32",
        "model.adaptive_cutoffs=[200,2000]",
        "task.tokens_per_sample=32",
        "task.batch_size=4",
        "task.valid_max_tokens=2000",
    ]
    train = run(
        "train",
        "config=wikitext2_tiny",
        f"data={data}",
        f"run_dir={run_dir}",
        "max_update=3",
        "validate_interval=0",
        "save_interval=3",
        "final_subset=null",
        "tensorboard=false",
        "progress=plain",
        "device=cpu",
        *tiny,
    )
    assert "model transformer_lm:" in train.stderr
    valid = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in valid if r["kind"] == "valid"] == [2000]

    result = run(
        "eval",
        f"checkpoint={run_dir / 'checkpoint_last.pt'}",
        "subset=test",
        "device=cpu",
        "task.context_window=8",
        "task.eval_batch_size=512",
    )
    metrics = last_json(result)
    assert metrics["tokens"] == meta["splits"]["test"]["tokens"]  # every test token, <eos> included, once
    assert (metrics["tokens_per_sample"], metrics["context_window"], metrics["step"]) == (32, 8, 3)
    assert math.isclose(metrics["ppl"], math.exp(metrics["loss"]), rel_tol=1e-9)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0


def test_wt103_preset_dry_run_reports_247m_parameters(capsys):
    assert train_main(["config=transformer_lm_wt103", "dry_run=true", "data=/nonexistent"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["model"], summary["task"], summary["vocab_size"]) == ("transformer_lm", "language_modeling", 267744)
    assert abs(summary["parameters"] - 247e6) / 247e6 < 0.01


def test_streamed_all_attention_word_lm_trains_and_scores_every_test_token(wt2_sample: Path, tmp_path: Path):
    run_dir = tmp_path / "stream"
    tiny = [
        "model.n_layers=1",
        "model.d_model=16",
        "model.n_heads=2",
        "model.persistent_memory=8",
        "model.attn_span=64",
        "task.tokens_per_sample=16",
        "task.batch_size=4",
        "task.valid_max_tokens=500",
    ]
    train = run(
        "train",
        "config=all_attention_tiny_wikitext2",
        f"data={wt2_sample}",
        f"run_dir={run_dir}",
        "max_update=4",
        "validate_interval=2",
        "save_interval=4",
        "final_subset=null",
        "tensorboard=false",
        "progress=plain",
        *tiny,
    )
    assert "model streaming_lm:" in train.stderr
    valid = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [(r["tokens"], r["protocol"]) for r in valid if r["kind"] == "valid"] == [(500, "stream")] * 2
    metrics = last_json(run("eval", f"checkpoint={run_dir / 'checkpoint_last.pt'}", "subset=test"))
    meta = json.loads((wt2_sample / "meta.json").read_text())
    assert metrics["tokens"] == meta["splits"]["test"]["tokens"] and metrics["streams"] == 8
    assert math.isclose(metrics["ppl"], math.exp(metrics["loss"]), rel_tol=1e-9) and metrics["step"] == 4
