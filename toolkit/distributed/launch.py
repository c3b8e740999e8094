"""`tk-train ... distributed.world_size=N` on one machine: relaunch the same command under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Optional, Sequence

from toolkit.errors import INTERRUPTED_EXIT


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch_local(world_size: int, args: Sequence[str]) -> int:
    """Run `torchrun --standalone --nproc_per_node=N -m toolkit.cli.train ARGS`; returns the exit code of the
    rank that failed first (toolkit.distributed.torchrun), else 0.

    SIGTERM/SIGINT sent to this process are forwarded to torchrun, which passes them to every rank; the ranks
    finish their update, save checkpoint_last.pt and leave, and this process then exits with code 3. torchrun
    runs in its own session so that a Ctrl-C in the terminal reaches the ranks once (through this process),
    not twice. torchrun kills ranks that have not left 30 s after the signal: a save must fit in that time.
    """
    command = [
        sys.executable,
        "-m",
        "toolkit.distributed.torchrun",
        "--standalone",
        f"--nproc_per_node={world_size}",
        "-m",
        "toolkit.cli.train",
        *args,
    ]
    print(f"launching {world_size} processes: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    received: list[int] = []
    child: Optional[subprocess.Popen] = None

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        received.append(signum)
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen(command, start_new_session=True)
        if received:  # a signal that came while torchrun was being started
            os.killpg(child.pid, received[0])
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        name = signal.Signals(received[0]).name
        print(
            f"stopped by {name}: forwarded to torchrun and its {world_size} ranks (torchrun exit code {code})",
            file=sys.stderr,
            flush=True,
        )
        return INTERRUPTED_EXIT
    return code
