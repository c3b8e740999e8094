"""Process-group setup for torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator, Tuple

import torch
import torch.distributed as dist

from toolkit.train.setup import resolve_device


@contextlib.contextmanager
def distributed_context(cfg: Any) -> Iterator[Tuple[torch.device, int, int]]:
    """Yield (device, rank, world_size); joins the torchrun process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world_size <= 1:
        yield device, 0, 1
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.distributed.timeout_s))
    try:
        yield device, rank, world_size
    finally:
        dist.destroy_process_group()
