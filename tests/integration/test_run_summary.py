"""Every training run ends with its summary: on stderr (stdout's last line stays the final metrics' JSON)
and in run_dir/summary.json, with the n-gram levels of the evaluated split for a char LM."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.train import main as train_main
from toolkit.eval.ngram_reference import ngram_references


def test_run_ends_with_a_summary(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_char_args(
        text8_small, run_dir, max_update=6, validate_interval=3, final_subset="valid", **{"task.eval_max_tokens": 3000}
    )
    assert train_main(args) == 0
    captured = capsys.readouterr()
    final = json.loads(captured.out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    valid = read_log(run_dir, "valid")
    best = min(valid, key=lambda r: r["bpc"])
    assert summary["best_valid"] == best["bpc"] and summary["best_valid_step"] == best["step"]
    assert summary["tokens_seen"] == 6 * 4 * 33 and summary["steps"] == 6
    assert summary["final"]["bpc"] == final["bpc"] and summary["final"]["protocol"] == "windows"
    train = np.fromfile(text8_small / "train.bin", dtype=np.uint8)
    scored = np.fromfile(text8_small / "valid.bin", dtype=np.uint8)[:3000]
    assert summary["references"] == ngram_references(train, scored, 27)
    assert "training summary" in captured.err and "count n-gram references on valid" in captured.err
