"""Exact resume: N updates straight == N/2, stop (also by SIGTERM), resume to N, bit for bit on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.train import main as train_main
from toolkit.errors import INTERRUPTED_EXIT
from toolkit.train.checkpoint import load_checkpoint


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint_last.pt")


def assert_same_run(a: Path, b: Path, updates: int = 8) -> None:
    state_a, state_b = final_state(a), final_state(b)
    assert state_a["position"] == state_b["position"]
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key
    losses_a = {r["step"]: r["loss"] for r in read_log(a)}
    losses_b = {r["step"]: r["loss"] for r in read_log(b)}
    assert losses_a == losses_b
    assert sorted(losses_a) == list(range(1, updates + 1))


def test_resume_equals_straight_run(text8_small, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(tiny_char_args(text8_small, straight)) == 0
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4)) == 0
    assert final_state(resumed)["position"]["step"] == 4
    assert train_main(tiny_char_args(text8_small, resumed)) == 0  # picks up checkpoint_last.pt
    assert_same_run(straight, resumed)


def test_sigterm_mid_run_then_resume_is_exact(text8_small, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # a run that would go on for a long time, stopped by SIGTERM once it has made a few updates
    args = tiny_char_args(text8_small, resumed, max_update=100000, save_interval=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli.train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = resumed / "train_log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == INTERRUPTED_EXIT, err
    stopped_at = final_state(resumed)["position"]["step"]
    assert stopped_at >= 3 and "stopped by signal" in out
    # resume to a few updates past the stop, and compare with a straight run of the same length
    total = stopped_at + 4
    assert train_main(tiny_char_args(text8_small, resumed, max_update=total)) == 0
    assert train_main(tiny_char_args(text8_small, straight, max_update=total)) == 0
    assert_same_run(straight, resumed, updates=total)
