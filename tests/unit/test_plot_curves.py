"""scripts/plot_curves.py overlays several runs' validation curves (and n-gram levels) in one PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_curves.py"


def fake_run(folder: Path, values: list[float], references: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    rows = [{"kind": "train", "step": 10 * i, "bpc": v + 0.1} for i, v in enumerate(values, 1)]
    rows += [{"kind": "valid", "step": 10 * i, "bpc": v} for i, v in enumerate(values, 1)]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if references:
        (folder / "summary.json").write_text(json.dumps({"references": references}))
    return folder


def plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_valid_curves_of_several_runs_with_references(tmp_path):
    a = fake_run(tmp_path / "a", [3.4, 3.0, 2.6], {"unigram": 4.1, "bigram": 3.4, "trigram": 2.9})
    b = fake_run(tmp_path / "b", [3.5, 3.4, 3.3])
    out = tmp_path / "curves.png"
    result = plot(str(a), str(b), "--valid-only", "--references", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_log_is_one_line_exit_2(tmp_path):
    result = plot(str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'nothing' / 'train_log.jsonl'} is missing (not a tk-train run folder?)"
    )
    assert not (tmp_path / "x.png").exists()
