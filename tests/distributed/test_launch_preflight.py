"""`tk-train ... distributed.world_size=2` on a start that cannot work: one line, exit code 2.

The launcher checks the run folder's checkpoint (and init_from) before starting torchrun, with the functions
the ranks use; what only the ranks can find keeps the rank's exit code and leaves out torchrun's report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import folder_snapshot as snapshot
from tests.conftest import only_error_line as one_line
from tests.conftest import tiny_char_args, tiny_mt_args
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(text8_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=1)) == 0
    return run


def test_resume_that_does_not_fit_is_refused_before_torchrun(text8_small, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    capsys.readouterr()
    args = tiny_char_args(text8_small, run, max_update=4, **{"model.n_layers": 2}) + ["distributed.world_size=2"]
    assert train_main(args) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: cannot resume from {run / 'checkpoint_last.pt'}: model.n_layers is 1 in the checkpoint, 2 now "
        "(resume with the run's settings, or choose another run_dir)"
    )
    assert snapshot(run) == before


def test_unreadable_checkpoint_is_refused_before_torchrun(text8_small, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert train_main(tiny_char_args(text8_small, run) + ["distributed.world_size=2"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot read checkpoint {run / 'checkpoint_last.pt'}: "), line
    assert snapshot(run) == {"checkpoint_last.pt": b"not a checkpoint"}


def test_init_from_of_another_task_is_refused_before_torchrun(text8_small, iwslt_sample, tmp_path, capsys):
    mt = tmp_path / "mt"
    assert train_main(tiny_mt_args(iwslt_sample, mt, max_update=1)) == 0
    run = tmp_path / "run"
    capsys.readouterr()
    args = tiny_char_args(text8_small, run) + [f"init_from={mt / 'checkpoint_last.pt'}", "distributed.world_size=2"]
    assert train_main(args) == 2
    assert one_line(capsys.readouterr().err).startswith(
        f"error: init_from={mt / 'checkpoint_last.pt'}: the checkpoint holds 0 of the model's "
    )
    assert not run.exists()


def test_a_rank_refusing_to_resume_gives_exit_2_without_torchrun_report(text8_small, trained, tmp_path):
    """A checkpoint that fits the model but lacks the trainer's position: only the ranks' resume finds it."""
    run = tmp_path / "run"
    run.mkdir()
    state = load_checkpoint(trained / "checkpoint_last.pt")
    del state["position"]
    torch.save(state, run / "checkpoint_last.pt")
    before = snapshot(run)
    args = tiny_char_args(text8_small, run, max_update=4) + ["distributed.world_size=2"]
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.cli.train", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: cannot resume from {run / 'checkpoint_last.pt'}: 'position' (resume with the run's "
        "settings, or choose another run_dir)"
    ], result.stderr  # once, not once per rank
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr
    assert snapshot(run) == before
