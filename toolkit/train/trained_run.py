"""Load a trained run from a tk-train checkpoint: the one loader of tk-eval, tk-translate and tk-analyze.

The checkpoint is read with the safe loader (nothing in it can run code), its training config is rebuilt
with the caller's overrides, and the model built for the (possibly different) data folder must fit the
saved weights; when it does not, one line names the dataset, what it holds and what the checkpoint needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from toolkit.errors import ConfigError, DataError
from toolkit.models.saved_names import with_current_names


class VocabularyMismatch(DataError):
    """The data folder's vocabulary is not the one the checkpoint was trained on."""


@dataclass
class RunCheckpoint:
    """What a tk-train checkpoint holds that the commands need."""

    path: str
    config: DictConfig  # the training config (struct mode), with the caller's overrides applied
    weights: Dict[str, torch.Tensor]  # the model's state dict
    step: Optional[int]


@dataclass
class TrainedRun:
    """A checkpoint's task (on its data folder) and model (weights loaded, eval mode, on `device`)."""

    checkpoint: RunCheckpoint
    task: Any
    model: nn.Module
    device: torch.device


def read_run_checkpoint(
    path: str, overrides: Iterable[Tuple[str, str]] = (), data: Optional[str] = None
) -> RunCheckpoint:
    """The checkpoint's config and weights; `overrides` are dotted `key=value` pairs on its training config."""
    from toolkit.config.cli_overrides import apply_overrides
    from toolkit.config.compose import typed_train_config
    from toolkit.config.validate import validate_train_config
    from toolkit.train.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise DataError(f"{path} is not a tk-train checkpoint (no config/model inside)")
    # typed on today's schema: fields added since the checkpoint was written take their defaults, and
    # overrides (task.KEY=...) are checked as in tk-train
    config = typed_train_config(state["config"])
    apply_overrides(config, overrides)
    validate_train_config(config)
    if data is not None:
        config.data = data
    return RunCheckpoint(str(path), config, state["model"], state.get("position", {}).get("step"))


def load_trained_run(
    path: str,
    overrides: Iterable[Tuple[str, str]] = (),
    data: Optional[str] = None,
    device: str = "cpu",
    task_name: Optional[str] = None,
) -> TrainedRun:
    """Task, model (weights loaded, eval mode) and config of a checkpoint; `task_name` requires a task kind."""
    from toolkit.config.compose import load_registries
    from toolkit.train.setup import build_run, resolve_device

    load_registries()
    checkpoint = read_run_checkpoint(path, overrides, data)
    if task_name is not None and checkpoint.config.task.name != task_name:
        raise ConfigError(f"{path} is a {checkpoint.config.task.name} checkpoint, not a {task_name} one")
    target = resolve_device(device)
    run = build_run(checkpoint.config)
    check_weights_fit(run.model, checkpoint.weights, f"checkpoint {path}", checkpoint.config.data, run.task)
    run.model.load_state_dict(checkpoint.weights)
    return TrainedRun(checkpoint, run.task, run.model.to(target).eval(), target)


def check_weights_fit(model: nn.Module, weights: Dict[str, torch.Tensor], source: str, data: Any, task: Any) -> None:
    """DataError when a saved tensor's shape differs from the model's: the data's vocabulary, or the model config."""
    weights = with_current_names(model, weights)  # older checkpoints' keys, as load_state_dict reads them
    own = model.state_dict()
    for key, saved in weights.items():
        if key in own and tuple(own[key].shape) != tuple(saved.shape):
            mine, theirs = tuple(own[key].shape), tuple(saved.shape)
            vocab = getattr(task, "vocab_size", 0)
            differing = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
            if len(mine) == len(theirs) and vocab and all(mine[i] == vocab for i in differing):
                raise VocabularyMismatch(
                    f"data={data}: the dataset holds a vocabulary of {vocab} symbols; {source} needs "
                    f"{theirs[differing[0]]} (parameter '{key}' has shape {theirs})"
                )
            raise DataError(
                f"{source} does not fit the model built from its config and data={data}: parameter "
                f"'{key}' has shape {theirs} there, {mine} here"
            )
    missing = [key for key in own if key not in weights]
    if missing:
        raise DataError(
            f"{source} lacks parameter '{missing[0]}' of the model built from its config ({len(missing)} missing)"
        )
    unexpected = [key for key in weights if key not in own]
    if unexpected:
        raise DataError(
            f"{source} holds parameter '{unexpected[0]}', which the model built from its config "
            f"lacks ({len(unexpected)} such)"
        )
