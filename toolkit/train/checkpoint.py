"""Whole-run checkpoints, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from toolkit.data.atomic import atomic_write_bytes
from toolkit.errors import DataError

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def rng_state() -> Dict[str, Any]:
    """Every random generator a run uses (torch, cuda, numpy, python)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: Dict[str, Any], path: str | os.PathLike) -> None:
    """Serialize to memory, then write through a temporary file so `path` is never half-written."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt files
        raise DataError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None


def interval_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint_<step>.pt files, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint_*.pt") if (m := re.fullmatch(r"checkpoint_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def prune_interval_checkpoints(run_dir: Path, keep: int) -> None:
    for path in interval_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def find_resume(run_dir: Path) -> Optional[Path]:
    path = run_dir / LAST
    return path if path.is_file() else None
