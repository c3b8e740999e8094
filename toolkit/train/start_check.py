"""What a run starts from, checked in the launching process before torchrun starts the ranks.

A distributed run's ranks would each refuse a checkpoint that cannot be read or does not fit, and torchrun
would turn their one-line errors into its own report. The launcher checks the same things first, with the
same functions the ranks use, on the model built on the meta device (shapes only, no memory, no time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from toolkit.train import checkpoint as ckpt
from toolkit.train.finetune import init_weights
from toolkit.train.resume_check import check_resume_fits


def check_start_state(cfg: Any, task: Any, model: nn.Module) -> None:
    """The run folder's checkpoint_last.pt (readable, fits the new config and data), else init_from's weights."""
    resume = ckpt.find_resume(Path(cfg.run_dir))
    if resume is not None:
        check_resume_fits(ckpt.load_checkpoint(resume), cfg, model, task, resume)
    elif cfg.init_from:
        init_weights(model, cfg.init_from, cfg.init_from_min_fraction)
