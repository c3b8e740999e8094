"""The validation pass of a composed training config: every setting is checked before any work.

Two stages, both before the run folder is touched:
- `validate_train_config` (part of composing, so also for --cfg job, dry runs and every -m job): the
  declared ranges (toolkit.config.ranges), auxiliary-weight schedules, extra parameter groups and the
  block-coordinate-descent phases. Fixed choices are Enums, which OmegaConf checked while composing.
- `check_run` (tk-train, right before a dry run or training): the data folder and the run folder, then the
  task is built on its data (which checks that the dataset is one of this task's) and the model on the meta
  device (no memory, no time): every auxiliary weight must name a term the model has.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, List, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from toolkit.config.ranges import check_ranges
from toolkit.data.atomic import check_output_folder
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.registry import LR_SCHEDULERS, OPTIMIZERS, TASKS

log = logging.getLogger(__name__)


def validate_train_config(cfg: DictConfig) -> None:
    """Ranges, schedules, parameter groups and phases of a composed config; a one-line ConfigError."""
    from toolkit.aux_layer_weights import build_aux_weights
    from toolkit.train.param_groups import MAIN_GROUP
    from toolkit.train.schedules import validate_phases

    check_ranges(cfg)
    build_aux_weights(cfg)  # types every schedule (kind, value, ...) and its ranges
    groups = check_param_groups(cfg.param_groups)
    validate_phases(cfg.phases, [*groups, MAIN_GROUP])


def check_param_groups(param_groups: Any) -> List[str]:
    """Type every extra parameter group's optimizer and lr schedule and check their ranges; their names."""
    from toolkit.train.param_groups import ParamGroupConfig, typed_component

    for name, raw in param_groups.items():
        where = f"param_groups.{name}"
        try:
            group = OmegaConf.merge(OmegaConf.structured(ParamGroupConfig), raw)
        except Exception as error:  # noqa: BLE001 - OmegaConf raises several types
            raise ConfigError(f"{where}: {str(error).splitlines()[0]}") from None
        check_ranges(group, f"{where}.")
        for key, registry in (("optimizer", OPTIMIZERS), ("lr_scheduler", LR_SCHEDULERS)):
            check_ranges(typed_component(registry, group[key], f"{where}.{key}"), f"{where}.{key}.")
    return [str(name) for name in param_groups]


def check_run(cfg: DictConfig, training: bool = True) -> Tuple[Any, ToolkitModel]:
    """What needs the file system, the data and the model, checked before the run folder is written.

    For training, `data` must be a folder and `run_dir` a folder this process can write in (or create).
    Returns the task and the meta-device model (see `check_task_and_model`).
    """
    if training:
        if cfg.data is None:
            raise ConfigError("missing required value for key 'data' (a folder made by tk-preprocess)")
        if not Path(cfg.data).is_dir():
            raise ConfigError(f"data={cfg.data}: no such folder (prepare it with tk-preprocess)")
        check_output_folder(cfg.run_dir, "run_dir")
    return check_task_and_model(cfg)


def check_task_and_model(cfg: DictConfig) -> Tuple[Any, ToolkitModel]:
    """Build the task on its data and the model on the meta device; check the auxiliary weights' names.

    Returns both (the model's tensors have shapes but no storage), for checks against a checkpoint."""
    task = TASKS.get(cfg.task.name).builder(cfg.task, cfg.data, cfg.seed, 0, cfg.distributed.world_size)
    with torch.device("meta"):
        model = task.build_model(cfg.model)
    check_aux_weights(cfg, aux_term_names(model))
    return task, model


def aux_term_names(model: ToolkitModel) -> List[str]:
    """The auxiliary terms a model can return."""
    return list(model.aux_term_names())


def check_aux_weights(cfg: DictConfig, terms: List[str]) -> None:
    """Every aux_weights key that is a plain name must be a term of the model (a ConfigError otherwise).

    A key that is a pattern (full match, e.g. `layer_\\d+_nll`) may match no term: an ablation preset keeps
    its parent's schedules and switches the terms off. It is logged, since it then has no effect.
    """
    from toolkit.aux_layer_weights import KEY, layer_term_names

    if cfg.get(KEY) is not None and not set(layer_term_names(cfg.model.get("n_layers") or 0)) & set(terms):
        log.warning("%s: model %s has no intermediate-layer terms: it has no effect", KEY, cfg.model.name)
    for key in cfg.aux_weights:
        key = str(key)
        if any(re.fullmatch(key, term) for term in terms):
            continue
        has = f"its terms: {', '.join(terms)}" if terms else "it has none"
        if re.escape(key) == key:
            raise ConfigError(f"aux_weights.{key}: model {cfg.model.name} has no auxiliary term of that name ({has})")
        log.warning(
            "aux_weights.%s matches no auxiliary term of model %s (%s): it has no effect", key, cfg.model.name, has
        )
