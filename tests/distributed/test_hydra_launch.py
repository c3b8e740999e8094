"""`tk-train -m ...`: sweeps, their run folders and up-front errors (DDP inside a submitit job:
test_submitit_launch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.hydra_launch import parse_sweep
from toolkit.cli.train import main as train_main

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the `slurm` extra (in `dev`, so CI has it)


def tk_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_sweep_trains_each_combination_in_its_own_run_folder(text8_small, tmp_path):
    run_dir = tmp_path / "run"
    tk_train(
        tmp_path,
        "-m",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *tiny_char_args(text8_small, run_dir, max_update=2, save_interval=2),
        "seed=1,2",
    )
    assert sorted(p.name for p in run_dir.iterdir()) == ["seed=1", "seed=2"]
    first, second = (read_log(run_dir / name) for name in ("seed=1", "seed=2"))
    assert len(first) == len(second) == 2 and first[0]["loss"] != second[0]["loss"]


def test_sweeps_expand_to_every_combination_and_name_the_swept_keys() -> None:
    jobs, swept = parse_sweep(["config=t", "seed=1,2", "model.d_model=8", "optimizer.lr=0.1,0.2"])
    assert swept == ["seed", "optimizer.lr"]
    assert [job[1::2] for job in jobs] == [
        ["seed=1", "optimizer.lr=0.1"],
        ["seed=1", "optimizer.lr=0.2"],
        ["seed=2", "optimizer.lr=0.1"],
        ["seed=2", "optimizer.lr=0.2"],
    ]


def test_a_bad_key_in_any_job_is_one_line_and_nothing_is_launched(text8_small, tmp_path, capsys):
    args = tiny_char_args(text8_small, tmp_path / "run")
    assert train_main(["-m", f"hydra.sweep.dir={tmp_path / 'multirun'}", *args, "model.d_model=32,abc"]) == 2
    swept_error = capsys.readouterr().err.strip().splitlines()
    assert train_main([*args, "model.d_model=abc"]) == 2  # plain tk-train says the same, in one line
    assert (
        swept_error
        == capsys.readouterr().err.strip().splitlines()
        == ["error: wrong type for key 'model.d_model': Value 'abc' of type 'str' could not be converted to Integer"]
    )
    assert train_main(["hydra/launcher=submitit_slurm", *args]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: hydra/... and hydra.* settings take effect with --multirun (-m): add -m"
    )
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "run").exists()
