"""`tk-train --multirun hydra/launcher=NAME ...`: run tk-train's jobs through a Hydra launcher (Slurm).

    tk-train -m hydra/launcher=slurm config=mae/mae7_wmt14 hydra.launcher.partition=YOURS \\
        hydra.launcher.nodes=4 hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8

Hydra (hydra-submitit-launcher, `pip install -e ".[slurm]"`) only schedules the jobs: one per combination of
the sweep (`seed=1,2,3`), each with `nodes x tasks_per_node` processes. Hydra sees only its own settings and
the swept keys; the other tk-train arguments travel verbatim in the application's config, and inside every
process the training config is built exactly as plain `tk-train` builds it (toolkit/cli/hydra_task.py). Every
combination is checked up front, so a bad key is still one line and exit code 2 before anything is queued.

Run folders: a job trains in the preset's `run_dir` (or the one given), plus, when the command sweeps, a
sub-folder named after the job's values of the swept keys (`seed=1,2` -> runs/mae7_wmt14/seed=1 and /seed=2),
so that resubmitting the same command resumes the same runs, as plain tk-train does in its run_dir.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from toolkit.cli.hydra_task import APP_CONFIG, SWEEP, LaunchConfig, arg_key, job_args, job_elements, run_job, value_text
from toolkit.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")


def is_hydra_arg(arg: str) -> bool:
    return arg in MULTIRUN_FLAGS or arg.lstrip("+~").startswith(("hydra/", "hydra."))


def wants_hydra(args: Sequence[str]) -> bool:
    """True when the command line asks for a Hydra launch (--multirun or a hydra.* setting)."""
    return any(is_hydra_arg(arg) for arg in args)


def sweep_elements(arg: str) -> List[str] | None:
    """The elements of a swept argument as Hydra's basic sweeper passes them to the jobs; None: not swept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(arg)
    except Exception:  # not Hydra's grammar: one value, passed verbatim to compose_train_config
        return None
    if not override.is_sweep_override():
        return None
    try:
        return list(override.sweep_string_iterator())
    except HydraException as error:
        raise ConfigError(f"{arg}: {str(error).splitlines()[0]} (sweeps: a,b  range(...)  choice(...))") from None


def parse_sweep(train_args: Sequence[str]) -> Tuple[List[List[str]], List[str]]:
    """Each job's tk-train arguments (`seed=1,2` -> [[seed=1], [seed=2]]) and the swept keys."""
    swept = {arg_key(arg): elements for arg in train_args if (elements := sweep_elements(arg)) is not None}
    combos = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
    return [job_args(train_args, combo) for combo in combos], list(swept)


def check_jobs(jobs: Sequence[Sequence[str]]) -> None:
    """Compose every job's training config: a one-line ConfigError on the first bad one."""
    from toolkit.cli.common import pop_config_name
    from toolkit.config.compose import compose_train_config

    for job in jobs:
        args = list(job)
        compose_train_config(pop_config_name(args), args)


def describe_hydra_error(text: str) -> str:
    """One line from a multi-line Hydra error (e.g. an unknown launcher and the available ones)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Available options")]
    if starts:
        options = itertools.takewhile(lambda line: " " not in line and ":" not in line, lines[starts[0] + 1 :])
        return f"{lines[0]}; valid: {', '.join(options)}"
    return "; ".join(lines[:2])


def multirun(hydra_args: List[str], train_args: List[str], swept: List[str]) -> List[Any]:
    """Hydra's multirun of `run_job` over the sweep; returns the jobs' results (JobReturn), in order."""
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from toolkit.config.compose import config_dir

    # the store travels to the jobs with Hydra's state; Hydra itself parses only its settings and the sweeps
    ConfigStore.instance().store(name=APP_CONFIG, node=LaunchConfig(train_args=train_args, swept=swept))
    sweeps = [f"++{SWEEP}.{arg_key(arg)}={arg.split('=', 1)[1]}" for arg in train_args if arg_key(arg) in swept]
    try:
        # the shipped configs on the search path: train.yaml for the jobs, hydra/launcher/*.yaml for the launcher
        with initialize_config_dir(
            config_dir=str(Path(config_dir()).resolve()), version_base="1.3", job_name="tk-train"
        ):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            returns = hydra.multirun(config_name=APP_CONFIG, task_function=run_job, overrides=[*hydra_args, *sweeps])
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"hydra: {describe_hydra_error(str(error))}") from None
    return [result for batch in returns for result in batch]


def launch(args: List[str]) -> int:
    """Check every job, launch them through Hydra; returns the first non-zero job exit code, else 0."""
    if not any(arg in MULTIRUN_FLAGS for arg in args):
        raise ConfigError("hydra/... and hydra.* settings take effect with --multirun (-m): add -m")
    hydra_args = [arg for arg in args if is_hydra_arg(arg) and arg not in MULTIRUN_FLAGS]
    train_args = [arg for arg in args if not is_hydra_arg(arg)]
    for arg in train_args:
        if arg.startswith("-"):
            raise ConfigError(f"unknown option '{arg}' with --multirun (only key=value and hydra settings)")
    jobs, swept = parse_sweep(train_args)
    check_jobs(jobs)
    slurm = [arg for arg in hydra_args if arg.lstrip("+") in ("hydra/launcher=slurm", "hydra/launcher=submitit_slurm")]
    if slurm and not (shutil.which("sbatch") and shutil.which("srun")):  # what submitit's Slurm executor runs
        raise ConfigError(f"{slurm[0]}: Slurm's sbatch/srun are not on PATH (submit from a node of the cluster)")
    print(f"launching {len(jobs)} job(s) through Hydra", file=sys.stderr, flush=True)
    failed = [
        (result, result.return_value) for result in multirun(hydra_args, train_args, swept) if result.return_value
    ]
    for result, code in failed:
        name = " ".join(f"{key}={value_text(element)}" for key, element in job_elements(result.overrides).items())
        print(
            f"error: job {name or 'of the command'} exited with code {code}; its logs are in "
            f"{result.hydra_cfg.hydra.sweep.dir}",
            file=sys.stderr,
            flush=True,
        )
    return failed[0][1] if failed else 0
