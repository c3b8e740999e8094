"""`tk-train -m`: tk-train's arguments reach every job verbatim, job errors and dry runs behave as in tk-train,
the `slurm` launcher preset, and submitit's preemption signal turned into the trainer's SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_log, tiny_char_args
from tests.distributed.test_ddp import NO_DROPOUT, assert_close_models
from toolkit.cli.hydra_launch import parse_sweep
from toolkit.cli.train import main as train_main

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the `slurm` extra (in `dev`, so CI has it)

# block-coordinate-descent phases and a parameter group: dict values, an open mapping (param_groups.NAME)
BCD = {
    "param_groups.first": "{params: 'layers\\.0\\.', optimizer: {name: sgd, lr: 0.1}, lr_scheduler: {name: constant}}",
    "phases": "{unit: update, cycle: [{groups: [first], length: 1}, {groups: [main], length: 2}]}",
}


def tk_train_m(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli.train", "-m", f"hydra.sweep.dir={cwd / 'multirun'}", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_dict_overrides_reach_a_two_task_submitit_job_verbatim(text8_small, tmp_path):
    """Hydra would rewrite `{unit: update}` as `{unit:update}` (another YAML value) and refuses the open
    mapping param_groups.first; the job must train what plain tk-train trains."""
    single, job = tmp_path / "single", tmp_path / "job"
    assert (
        train_main(tiny_char_args(text8_small, single, max_update=5, **NO_DROPOUT, **BCD, **{"task.batch_size": 8}))
        == 0
    )
    result = tk_train_m(
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        *tiny_char_args(text8_small, job, max_update=5, **NO_DROPOUT, **BCD, **{"task.batch_size": 4}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close_models(single, job, atol=1e-6)  # 2 DDP ranks x 4 windows == 1 process x 8, phases included
    assert [r["loss"] for r in read_log(job)] == pytest.approx([r["loss"] for r in read_log(single)], abs=1e-5)
    command = json.loads((job / "command.json").read_text())["argv"]
    assert f"phases={BCD['phases']}" in command and command[-1] == f"run_dir={job}"  # reruns with plain tk-train


def test_job_errors_are_tk_trains_and_dry_runs_do_not_train(text8_small, tmp_path, capsys):
    missing = tmp_path / "missing"
    args = tiny_char_args(missing, tmp_path / "run")
    assert train_main(args) == 2
    plain_error = capsys.readouterr().err.strip()
    assert plain_error == f"error: data={missing}: no such folder (prepare it with tk-preprocess)"
    result = tk_train_m(tmp_path, *args, "dry_run=true,false")  # Hydra's basic launcher: jobs in the process
    assert result.returncode == 2
    assert plain_error in result.stderr.splitlines()
    assert f"error: job dry_run=false exited with code 2; its logs are in {tmp_path / 'multirun'}" in result.stderr
    summary = [line for line in result.stdout.splitlines() if line.startswith("{")]  # Hydra logs to stdout too
    assert [json.loads(line)["model"] for line in summary] == ["transformer_lm"]  # the dry run's summary
    assert not (tmp_path / "run").exists()


def test_sweep_elements_become_tk_train_values_and_the_rest_stays_verbatim() -> None:
    jobs, swept = parse_sweep(["config=t", "phases={unit: update}", "task.mode='1','2'", "init_from=a\\:b,c"])
    assert swept == ["task.mode", "init_from"]
    assert jobs[0] == ["config=t", "phases={unit: update}", 'task.mode="1"', "init_from=a:b"]  # "1": a string
    assert [job[2:] for job in jobs[1:]] == [
        ['task.mode="1"', "init_from=c"],
        ['task.mode="2"', "init_from=a:b"],
        ['task.mode="2"', "init_from=c"],
    ]


def test_the_slurm_preset_is_submitit_slurm_with_one_process_per_gpu() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from toolkit.cli.hydra_task import APP_CONFIG, LaunchConfig
    from toolkit.config.compose import config_dir

    ConfigStore.instance().store(name=APP_CONFIG, node=LaunchConfig())
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            APP_CONFIG,
            ["hydra/launcher=slurm", "hydra.launcher.nodes=4", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (4, 8, 8, "gpu")


def test_the_preemption_signal_reaches_the_trainer_as_sigterm() -> None:
    from toolkit.distributed.submitit_env import forward_preemption_to_sigterm
    from toolkit.train.signals import StopRequest

    previous = signal.getsignal(signal.SIGUSR2)
    stop = StopRequest().install()
    try:
        forward_preemption_to_sigterm()
        os.kill(os.getpid(), signal.SIGUSR2)  # what Slurm sends signal_delay_s before the time limit
    finally:
        stop.restore()
        signal.signal(signal.SIGUSR2, previous)
    assert stop.signal == signal.SIGTERM
