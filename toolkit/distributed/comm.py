"""Collective helpers that reduce to no-ops in a single process."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, List

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sums(values: Dict[str, float]) -> Dict[str, float]:
    """Sum float logs over ranks (one collective for all keys)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one (e.g. a signal reached one rank)."""
    if not is_distributed():
        return flag
    return all_reduce_sums({"flag": float(flag)})["flag"] > 0


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def maybe_no_sync(model: nn.Module, skip: bool) -> ContextManager:
    """DDP's no_sync on all but the last micro-batch of an update."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def wrap_ddp(model: nn.Module, device: torch.device, cfg: Any) -> nn.Module:
    """DistributedDataParallel around the model (the trainer keeps the bare model for saving)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
