"""`tk-train ... distributed.world_size=2`: SIGTERM to the command reaches torchrun and both ranks, which
save checkpoint_last.pt; the command exits with code 3 and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import tiny_char_args
from toolkit.errors import INTERRUPTED_EXIT
from toolkit.train.checkpoint import load_checkpoint


def test_sigterm_to_the_launcher_is_forwarded_to_the_ranks(text8_small, tmp_path):
    run = tmp_path / "run"
    args = tiny_char_args(text8_small, run, max_update=100000, save_interval=0) + ["distributed.world_size=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = run / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT, err
    assert "stopped by signal at step" in out
    assert "stopped by SIGTERM: forwarded to torchrun and its 2 ranks" in err
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["position"]["step"] >= 3 and state["trainer"]["world_size"] == 2
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(run) not in ps  # neither torchrun nor a rank still runs
