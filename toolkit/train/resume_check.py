"""Before a resume touches the run folder: the checkpoint must fit the model that the new config builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf
from torch import nn

from toolkit.errors import DataError, UserError
from toolkit.train.trained_run import VocabularyMismatch, check_weights_fit


def _flat(node: Any, prefix: str) -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


# model settings that may change on resume: regularisation, and the initialisation (the weights come from the
# checkpoint). Any other difference changes what the saved weights compute, so it is refused.
RESUMABLE_MODEL_KEYS = ("dropout", "attention_dropout", "activation_dropout", "adaptive_softmax_dropout", "init")


def _saved_model_config(saved: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint's model settings on today's schema: a field added since it was written takes the default
    the checkpoint's model was built with."""
    from toolkit.config.compose import typed_train_config

    try:
        typed = typed_train_config(saved)
    except UserError:  # a config the schema no longer reads: compare what was saved
        return saved.get("model", {})
    return OmegaConf.to_container(typed.model, resolve=True, enum_to_str=True)


def model_config_changes(saved: Dict[str, Any], current: Any) -> List[str]:
    """'model.n_layers is 1 in the checkpoint, 2 now' for each model key set in both that differs."""
    before = _flat(_saved_model_config(saved), "model")
    after = _flat(OmegaConf.to_container(current.model, resolve=True, enum_to_str=True), "model")
    return [
        f"{key} is {before[key]!r} in the checkpoint, {after[key]!r} now"
        for key in sorted(before)
        if key in after and before[key] != after[key]
    ]


def check_resume_fits(state: Dict[str, Any], cfg: Any, model: nn.Module, task: Any, path: Path) -> None:
    """DataError naming what differs (a model key, or the data's vocabulary) when `state` cannot be resumed."""
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise DataError(f"cannot resume from {path}: not a tk-train checkpoint (no config/model inside)")
    try:
        check_weights_fit(model, state["model"], f"checkpoint {path}", cfg.data, task)
    except DataError as error:
        changes = model_config_changes(state["config"], cfg)
        what = "; ".join(changes) if changes and not isinstance(error, VocabularyMismatch) else str(error)
        raise DataError(
            f"cannot resume from {path}: {what} (resume with the run's settings, or choose another run_dir)"
        ) from None
    changes = [
        c
        for c in model_config_changes(state["config"], cfg)
        if c.split(" ", 1)[0].rsplit(".", 1)[-1] not in RESUMABLE_MODEL_KEYS
    ]
    if changes:  # the weights fit, but would compute something else
        raise DataError(
            f"cannot resume from {path}: {'; '.join(changes)} (resume with the run's settings, or "
            "choose another run_dir)"
        )
