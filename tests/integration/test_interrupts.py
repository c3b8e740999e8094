"""SIGTERM/SIGINT outside the update loop (start-up, final test evaluation): exit 3 with one line, nothing damaged."""

from __future__ import annotations

import os
import signal

from tests.conftest import folder_snapshot as snapshot
from tests.conftest import tiny_char_args
from toolkit.cli.train import main as train_main
from toolkit.errors import INTERRUPTED_EXIT
from toolkit.train import run as run_module
from toolkit.train.checkpoint import load_checkpoint


def signalled_first(function, sig: int):
    """`function`, but this process receives `sig` just before it runs (as from `kill` or Ctrl-C)."""

    def wrapper(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return function(*args, **kwargs)

    return wrapper


def test_sigterm_during_start_up_exits_3_and_changes_nothing(text8_small, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=2)) == 0
    before = snapshot(run)
    monkeypatch.setattr(run_module, "build_run", signalled_first(run_module.build_run, signal.SIGTERM))
    capsys.readouterr()
    assert train_main(tiny_char_args(text8_small, run, max_update=4)) == INTERRUPTED_EXIT
    err = capsys.readouterr().err
    assert err.strip() == "error: stopped by SIGTERM during start-up" and "Traceback" not in err
    assert snapshot(run) == before  # the resume had not started: no file written, no lock left


def test_sigint_during_the_final_evaluation_exits_3_with_the_checkpoint_saved(
    text8_small, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    monkeypatch.setattr(run_module, "_final_evaluation", signalled_first(run_module._final_evaluation, signal.SIGINT))
    capsys.readouterr()
    assert train_main(tiny_char_args(text8_small, run, max_update=2, final_subset="test")) == INTERRUPTED_EXIT
    err = capsys.readouterr().err
    assert (
        err.strip() == f"error: stopped by SIGINT during the final evaluation ({run / 'checkpoint_last.pt'} is saved)"
    )
    assert load_checkpoint(run / "checkpoint_last.pt")["position"]["step"] == 2
    assert not (run / ".tk-train.lock").exists()


def test_the_entry_point_imports_nothing_heavy_before_its_signal_handler():
    """tk-train installs its SIGTERM/SIGINT handler before importing torch or Hydra, so a signal in the first
    seconds of a start is one line and exit 3 (not 143 from Python's default action)."""
    import subprocess
    import sys

    probe = (
        "import sys, toolkit.cli.train; print(sorted(m for m in ('torch', 'omegaconf', 'hydra') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_sigterm_before_the_heavy_imports_exits_3(text8_small, tmp_path, capsys, monkeypatch):
    from toolkit.cli import train as train_cli

    monkeypatch.setattr(train_cli, "run_cli", signalled_first(train_cli.run_cli, signal.SIGTERM))
    capsys.readouterr()
    assert train_main(tiny_char_args(text8_small, tmp_path / "run", max_update=2)) == INTERRUPTED_EXIT
    assert capsys.readouterr().err.strip() == "error: stopped by SIGTERM during start-up"
    assert not (tmp_path / "run").exists()
