"""Inside a submitit job (Hydra's submitit launchers): torchrun's environment from the job's own.

submitit starts one process per task (`nodes x tasks_per_node`, through srun on Slurm); the trainer reads
torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so each task exports them
from submitit's job environment before training.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Optional


def in_submitit_job() -> bool:
    """True in a process started by submitit (it sets SUBMITIT_EXECUTOR to 'local' or 'slurm')."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def submitit_task_count() -> int:
    """Number of tasks of the current submitit job (1 outside one)."""
    if not in_submitit_job():
        return 1
    import submitit

    return submitit.JobEnvironment().num_tasks


def export_torch_env() -> int:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from the job; returns the world size.

    MASTER_ADDR is the job's first host and MASTER_PORT a port derived from the job id (the same in every
    task). CUDA_VISIBLE_DEVICES is left alone: every task sees the node's GPUs and takes cuda:LOCAL_RANK.
    The job's values overwrite any inherited from the submitting shell.
    """
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return env.world_size


def forward_preemption_to_sigterm() -> None:
    """Turn submitit's preemption/timeout signal (USR2 by default) into SIGTERM for this process.

    Slurm sends it `signal_delay_s` before the time limit. submitit's own handler would stop rank 0 alone,
    mid-update and without a checkpoint; as SIGTERM it reaches the trainer's handler instead: all ranks stop at
    the next update boundary, rank 0 saves run_dir/checkpoint_last.pt and the job exits with code 3.
    """

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    # submitit's documented setting for the signal it uses (its default: USR2)
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signal.signal(getattr(signal, name), forward)
