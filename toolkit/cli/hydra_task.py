"""One job of `tk-train -m ...` (a Hydra launcher): the same config, checks and trainer as plain tk-train.

The Hydra application's own config (LaunchConfig) only carries tk-train's arguments, verbatim; the swept
ones come per job as Hydra overrides `++sweep.KEY=ELEMENT`. Each job composes the training config from
them with `compose_train_config`, so there is one source of truth and the same one-line errors. In a
submitit job with several tasks, torchrun's environment is exported from submitit's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from toolkit.errors import USER_ERROR_EXIT, ConfigError, UserError

APP_CONFIG = "tk_launch"  # the Hydra application's primary config (stored in Hydra's ConfigStore)
SWEEP = "sweep"  # swept training keys reach the jobs as Hydra overrides ++sweep.KEY=ELEMENT


@dataclass
class LaunchConfig:
    """What each launched job trains."""

    train_args: List[str] = field(default_factory=list)  # tk-train's config=NAME and key=value, verbatim
    swept: List[str] = field(default_factory=list)  # keys of train_args whose value is Hydra's, per job
    sweep: Dict[str, Any] = field(default_factory=dict)  # filled by Hydra in each job: ++sweep.KEY=ELEMENT


def arg_key(arg: str) -> str:
    """'++model.dropout=0.1' -> 'model.dropout'."""
    return arg.split("=", 1)[0].lstrip("+")


def value_text(element: str) -> str:
    """tk-train's text for one sweep element as Hydra writes it ('0.001', 'b\\:c', "'1'", '[1,2]').

    Hydra parses the element to a value; plain words (group choices, paths) stay as typed, anything else is
    written as JSON, which compose_train_config's YAML parser reads back to the same value.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override(f"k={element}").value()
    if isinstance(value, str):
        with contextlib.suppress(Exception):
            if OmegaConf.create(f"v: {value}")["v"] == value:
                return value
    return json.dumps(value)


def job_args(train_args: Sequence[str], elements: Mapping[str, str]) -> List[str]:
    """One job's tk-train arguments: each swept argument gets this job's element, the others stay verbatim."""
    return [
        f"{arg_key(arg)}={value_text(elements[arg_key(arg)])}" if arg_key(arg) in elements else arg
        for arg in train_args
    ]


def job_elements(task_overrides: Sequence[str]) -> Dict[str, str]:
    """{KEY: element} from a job's Hydra overrides ++sweep.KEY=element."""
    elements = {}
    for override in task_overrides:
        key, _, element = override.partition("=")
        key = key.lstrip("+")
        if key.startswith(SWEEP + "."):
            elements[key[len(SWEEP) + 1 :]] = element
    return elements


def job_run_dir(run_dir: str, args: Sequence[str], swept: Sequence[str]) -> str:
    """run_dir plus a sub-folder named after this job's values of the swept keys (none: run_dir itself)."""
    named = [arg for arg in args if arg_key(arg) in swept]
    return os.path.join(run_dir, ",".join(named).replace("/", "_")) if named else run_dir


def train_job(args: List[str], swept: Sequence[str]) -> int:
    """Compose, check and train as tk-train does with these arguments; returns the exit code."""
    from toolkit.cli.common import pop_config_name
    from toolkit.config.compose import compose_train_config
    from toolkit.config.validate import check_run
    from toolkit.distributed import submitit_env
    from toolkit.distributed.launch import launch_local, under_torchrun
    from toolkit.train.run import dry_run, train

    train_args = list(args)
    preset = pop_config_name(train_args)
    cfg = compose_train_config(preset, train_args)
    cfg.run_dir = job_run_dir(cfg.run_dir, args, swept)
    args = [*args, f"run_dir={cfg.run_dir}"]  # what reruns this job with plain tk-train
    tasks = submitit_env.submitit_task_count()
    if tasks > 1:
        if cfg.distributed.world_size not in (1, tasks):
            raise ConfigError(
                f"distributed.world_size={cfg.distributed.world_size} but the launcher starts {tasks} "
                "tasks (nodes x tasks_per_node); leave distributed.world_size at 1"
            )
        submitit_env.export_torch_env()
    if submitit_env.in_submitit_job():
        submitit_env.forward_preemption_to_sigterm()
    check_run(cfg, training=not cfg.dry_run)
    if cfg.dry_run:
        print(json.dumps(dry_run(cfg)))
        return 0
    if cfg.distributed.world_size > 1 and not under_torchrun():
        return launch_local(cfg.distributed.world_size, args)  # one task: torchrun starts the processes
    return train(cfg, preset, ["tk-train", *args])


def run_job(cfg: DictConfig) -> int:
    """Hydra's task function: one job of the sweep (one process per task under submitit's launchers)."""
    from hydra.core.hydra_config import HydraConfig

    train_args = OmegaConf.to_container(cfg.train_args, resolve=False)  # verbatim: ${...} is tk-train's
    args = job_args(train_args, job_elements(HydraConfig.get().overrides.task))
    try:
        return train_job(args, list(cfg.swept))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
