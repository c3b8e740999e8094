"""Checkpoint averaging (as fairseq's average_checkpoints.py): the element-wise mean of the model weights of the
last N interval checkpoints, the model the translation papers report (Vaswani et al. average the last 5 or 20).

`average_last_n: N` (with `keep_interval_checkpoints` >= N) makes a run end by writing checkpoint_avg.pt and, when
`final_subset` is set, testing it; scripts/average_checkpoints.py does the same for any run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from toolkit.errors import ConfigError, DataError
from toolkit.train.checkpoint import interval_checkpoints, load_checkpoint, save_checkpoint

log = logging.getLogger("toolkit.train")

AVERAGE = "checkpoint_avg.pt"


def average_checkpoints(paths: Sequence[Path]) -> Dict[str, Any]:
    """The newest checkpoint's config and position with every floating-point model tensor replaced by the mean
    over `paths` (accumulated in float64); other tensors (integer buffers) are the newest one's."""
    if not paths:
        raise ValueError("no checkpoints to average")
    states = [load_checkpoint(p)["model"] for p in paths]
    for path, state in zip(paths, states):
        if state.keys() != states[-1].keys():  # e.g. written before a model renamed its tensors (resumed since)
            odd = sorted(state.keys() ^ states[-1].keys())[0]
            raise DataError(
                f"cannot average {path} with {paths[-1]}: their models name their tensors differently "
                f"('{odd}' is in one only); average checkpoints written by the same toolkit version"
            )
    newest = load_checkpoint(paths[-1])
    averaged = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        else:
            averaged[key] = value
    return {
        "model": averaged,
        "config": newest["config"],
        "position": newest.get("position", {}),
        "averaged_from": [str(p) for p in paths],
    }


def check_averaging(cfg: Any) -> None:
    """average_last_n needs that many interval checkpoints kept: stop with one line before the run starts."""
    n = cfg.get("average_last_n", 0)
    if n < 0:
        raise ConfigError(f"average_last_n={n} must be >= 0 (0 = no averaging)")
    if n and (cfg.keep_interval_checkpoints < n or cfg.save_interval <= 0):
        raise ConfigError(
            f"average_last_n={n} needs keep_interval_checkpoints >= {n} and save_interval > 0 "
            f"(got keep_interval_checkpoints={cfg.keep_interval_checkpoints}, "
            f"save_interval={cfg.save_interval})"
        )


def write_average(run_dir: Path, n: int) -> Path | None:
    """Average the last `n` interval checkpoints of `run_dir` into checkpoint_avg.pt (fewer when the run kept
    fewer, with a warning); None when there are none."""
    paths: List[Path] = interval_checkpoints(run_dir)[-n:]
    if not paths:
        log.warning("average_last_n=%d: %s has no interval checkpoints; nothing averaged", n, run_dir)
        return None
    if len(paths) < n:
        log.warning("average_last_n=%d: only %d interval checkpoints in %s; averaging those", n, len(paths), run_dir)
    output = run_dir / AVERAGE
    save_checkpoint(average_checkpoints(paths), output)
    log.info("averaged %s -> %s", ", ".join(p.name for p in paths), output)
    return output
