"""`tk-train --multirun hydra/launcher=NAME ...`: run tk-train's jobs through a Hydra launcher (Slurm).

    tk-train -m hydra/launcher=submitit_slurm config=mae7_wmt14 \\
        hydra.launcher.nodes=4 hydra.launcher.tasks_per_node=8 hydra.launcher.gpus_per_node=8

Hydra (hydra-submitit-launcher, `pip install -e ".[slurm]"`) only schedules the jobs: one per combination of
the sweep (`seed=1,2,3`), each with `nodes x tasks_per_node` processes. Inside every process the training
config is built exactly as plain `tk-train` builds it (`compose_train_config` on that job's overrides), the
torch.distributed environment comes from submitit's job environment, and the same `train` runs. Every
combination is checked up front, so a bad key is still one line and exit code 2 before anything is queued.

Run folders: a job trains in the preset's `run_dir` (or the one given), plus, when the command sweeps, a
sub-folder named after the job's values of the swept keys (`seed=1,2` -> runs/mae7_wmt14/seed=1 and /seed=2),
so that resubmitting the same command resumes the same runs, as plain tk-train does in its run_dir.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any, List, Sequence

from toolkit.errors import ConfigError

MULTIRUN_FLAGS = ("-m", "--multirun")
SWEPT_KEYS_ENV = "TOOLKIT_SWEPT_KEYS"  # set in every job (hydra.job.env_set): the keys the sweep varies


def is_hydra_arg(arg: str) -> bool:
    return arg in MULTIRUN_FLAGS or arg.startswith(("hydra/", "hydra.", "+hydra"))


def wants_hydra(args: Sequence[str]) -> bool:
    """True when the command line asks for a Hydra launch (--multirun or a hydra.* setting)."""
    return any(is_hydra_arg(arg) for arg in args)


def parse_sweep(overrides: Sequence[str]) -> tuple[List[List[str]], List[str]]:
    """The training overrides of each job a sweep makes (`seed=1,2` -> [[seed=1], [seed=2]]) and the swept keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    choices, swept = [], []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            swept.append(key)
        else:
            values = [override.get_value_element_as_str()]
        choices.append([f"{key}={value}" for value in values])
    return [list(combination) for combination in itertools.product(*choices)], swept


def check_jobs(jobs: Sequence[Sequence[str]]) -> None:
    """Compose every job's training config: a one-line ConfigError on the first bad one."""
    from toolkit.cli.common import pop_config_name
    from toolkit.config.compose import compose_train_config

    for job in jobs:
        args = list(job)
        compose_train_config(pop_config_name(args), args)


def job_run_dir(run_dir: str, job_overrides: Sequence[str], swept_keys: Sequence[str]) -> str:
    """run_dir plus a sub-folder named after this job's values of the swept keys (none: run_dir itself)."""
    named = [o for o in job_overrides if o.split("=", 1)[0] in swept_keys]
    return os.path.join(run_dir, ",".join(named).replace("/", "_")) if named else run_dir


def export_distributed_env() -> None:
    """torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from submitit's job environment, when the
    job has more than one task; the trainer then joins the process group as under torchrun."""
    try:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return
    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job (e.g. Hydra's basic launcher)
        return
    if tasks > 1:
        # CUDA devices stay visible: the trainer picks cuda:LOCAL_RANK itself
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def run_job(_: Any) -> int:
    """Hydra's task function: one tk-train process of one job."""
    from hydra.core.hydra_config import HydraConfig

    from toolkit.cli.common import pop_config_name
    from toolkit.config.compose import compose_train_config
    from toolkit.train.run import train

    overrides = list(HydraConfig.get().overrides.task)
    args = list(overrides)
    preset = pop_config_name(args)
    cfg = compose_train_config(preset, args)
    cfg.run_dir = job_run_dir(cfg.run_dir, overrides, os.environ.get(SWEPT_KEYS_ENV, "").split())
    export_distributed_env()
    code = train(cfg, preset, ["tk-train", *overrides])
    if code != 0:
        raise SystemExit(code)
    return code


def launch(args: List[str]) -> int:
    """Check every job, then hand the command line to Hydra (which exits when its jobs are done)."""
    import hydra

    from toolkit.config.compose import config_dir, load_registries

    if not any(arg in MULTIRUN_FLAGS for arg in args):
        raise ConfigError("hydra/... and hydra.* settings take effect with --multirun (-m): add -m")
    jobs, swept = parse_sweep([arg for arg in args if not is_hydra_arg(arg)])
    check_jobs(jobs)
    print(f"launching {len(jobs)} job(s) through Hydra", file=sys.stderr, flush=True)
    load_registries()  # the config store entries train.yaml refers to
    app = hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(run_job)
    sys.argv = ["tk-train", *args, f"+hydra.job.env_set.{SWEPT_KEYS_ENV}='{' '.join(swept)}'"]
    app()
    return 0
