"""Build a run from its resolved config: seeds, device, task, model, criterion, parameter groups."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Dict

import numpy as np
import torch

from toolkit.aux_layer_weights import build_aux_weights
from toolkit.config.choices import Device
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.registry import CRITERIONS, TASKS
from toolkit.tasks.base import Task

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available")
    return torch.device(Device(name).value)  # a Device: the configs' Enum rejected any other value


def parameter_summary(model: ToolkitModel) -> Dict[str, int]:
    """Total parameters (shared tensors counted once) and any named sub-totals the model reports."""
    total = sum(p.numel() for p in model.parameters())
    summary = {"parameters": total}
    memory = model.memory_parameter_count()
    if memory:
        summary.update({"memory_parameters": memory, "non_memory_parameters": total - memory})
    summary.update(model.parameter_breakdown())
    return summary


@dataclass
class Run:
    task: Task
    model: ToolkitModel
    criterion: Any


def build_run(cfg: Any, rank: int = 0, world_size: int = 1) -> Run:
    """Task, model and criterion for a config. The data folder may be absent for a dry run."""
    seed_everything(cfg.seed)
    task_entry = TASKS.get(cfg.task.name)
    task: Task = task_entry.builder(cfg.task, cfg.data, cfg.seed, rank, world_size)
    model = task.build_model(cfg.model)  # with the product-key memories of model.memory
    aux = build_aux_weights(cfg)
    criterion = CRITERIONS.get(cfg.criterion.name).builder(cfg.criterion, task, aux)
    return Run(task, model, criterion)
