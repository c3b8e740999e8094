"""`tk-train ... distributed.world_size=N` on one machine: relaunch the same command under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch_local(world_size: int, args: Sequence[str]) -> int:
    """Run `torchrun --standalone --nproc_per_node=N -m toolkit.cli.train ARGS`; returns its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               "-m", "toolkit.cli.train", *args]
    print(f"launching {world_size} processes: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    return subprocess.call(command)
