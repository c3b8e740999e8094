"""Before a resume touches the run folder: the checkpoint must fit the model that the new config builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf
from torch import nn

from toolkit.errors import DataError
from toolkit.train.trained_run import VocabularyMismatch, check_weights_fit


def _flat(node: Any, prefix: str) -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


def model_config_changes(saved: Dict[str, Any], current: Any) -> List[str]:
    """'model.n_layers is 1 in the checkpoint, 2 now' for each model key set in both that differs."""
    before = _flat(saved.get("model", {}), "model")
    after = _flat(OmegaConf.to_container(current.model, resolve=True), "model")
    return [f"{key} is {before[key]!r} in the checkpoint, {after[key]!r} now"
            for key in sorted(before) if key in after and before[key] != after[key]]


def check_resume_fits(state: Dict[str, Any], cfg: Any, model: nn.Module, task: Any, path: Path) -> None:
    """DataError naming what differs (a model key, or the data's vocabulary) when `state` cannot be resumed."""
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise DataError(f"cannot resume from {path}: not a tk-train checkpoint (no config/model inside)")
    try:
        check_weights_fit(model, state["model"], f"checkpoint {path}", cfg.data, task)
    except DataError as error:
        changes = model_config_changes(state["config"], cfg)
        what = "; ".join(changes) if changes and not isinstance(error, VocabularyMismatch) else str(error)
        raise DataError(f"cannot resume from {path}: {what} (resume with the run's settings, or choose "
                        "another run_dir)") from None
