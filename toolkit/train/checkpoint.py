"""Whole-run checkpoints, written atomically (temporary file, fsync, rename) and read without running code.

A checkpoint holds only tensors and plain containers (dict, list, tuple, str, int, float, bool, None), so
`torch.load(weights_only=True)` reads it: a file carrying anything else (an object whose unpickling would
call a function) is refused before any of it is built. Checkpoints written before this format pickled the
numpy RNG state as a numpy array; exactly the numpy globals that rebuild such a uint32 array are allowed, so
those still load.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from toolkit.data.atomic import atomic_write_bytes
from toolkit.errors import DataError

log = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"

# what a numpy array pickles to (uint32 RNG keys of checkpoints from before the plain format); rebuilding one
# calls no user code, and its items (object arrays) go through the same safe unpickler
_LEGACY_NUMPY_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct]
_REFUSED = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
TEMP_MARK = ".tmp-"  # atomic writes go through ".<name>.tmp-XXXX" beside the file


def rng_state() -> Dict[str, Any]:
    """Every random generator a run uses (torch, cuda, numpy, python), as tensors and plain containers."""
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved: Any) -> tuple:
    if isinstance(saved, dict):
        keys = saved["keys"].numpy().astype(np.uint32)
        return saved["algorithm"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]
    return tuple(saved)  # the older format: np.random.get_state() itself


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: Dict[str, Any], path: str | os.PathLike) -> None:
    """Serialize to memory, then write through a temporary file so `path` is never half-written."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a checkpoint with the safe loader; anything that is not weights or plain data is refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _REFUSED.search(str(error))
        if refused is None:  # not a refused object: a damaged or foreign file
            detail = _UNPICKLER_DETAIL.search(str(error))
            reason = f"not a readable checkpoint ({detail.group(1)})" if detail else _first_line(error)
            raise DataError(f"cannot read checkpoint {path}: {reason}") from None
        what = refused.group(1) or refused.group(2)
        raise DataError(
            f"refusing to load checkpoint {path}: it holds '{what}', which loading could run as code "
            "(a tk-train checkpoint holds only tensors and plain data)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for corrupt files
        raise DataError(f"cannot read checkpoint {path}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def interval_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint_<step>.pt files, oldest first."""
    found = [
        (int(m.group(1)), p)
        for p in run_dir.glob("checkpoint_*.pt")
        if (m := re.fullmatch(r"checkpoint_(\d+)\.pt", p.name))
    ]
    return [p for _, p in sorted(found)]


def prune_interval_checkpoints(run_dir: Path, keep: int) -> None:
    for path in interval_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def find_resume(run_dir: Path) -> Optional[Path]:
    path = run_dir / LAST
    return path if path.is_file() else None


def sweep_temporaries(run_dir: Path) -> None:
    """Remove the temporary files of saves that a killed process never renamed into place.

    Only `.<name>.tmp-*` beside the run's own outputs (checkpoints, config.yaml, command.json); called while
    the run folder is locked, so no other trainer is writing one of them.
    """
    removed, size = 0, 0
    for path in run_dir.glob(f".*{TEMP_MARK}*"):
        name = path.name[1:].split(TEMP_MARK, 1)[0]
        if path.is_file() and (re.fullmatch(r"checkpoint_\w+\.pt", name) or name in ("config.yaml", "command.json")):
            size += path.stat().st_size
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary files (%.1f MB) left by interrupted saves in %s", removed, size / 1e6, run_dir)
