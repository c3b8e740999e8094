"""What every task provides to the trainer and to tk-eval."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Dict, Optional

import numpy as np
import torch

from toolkit.data.dataset_kind import missing_data, require_dataset
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.registry import MODELS

Batch = Dict[str, Any]  # {"net_input": {...}, "target": Tensor, "ntokens": int}


class Task:
    """A task owns its data, batching, model construction, metrics and evaluation.

    Training batches are a pure function of (epoch, index) and the seed, which makes resuming exact: the
    trainer stores only the position. `rank`/`world_size` select this process's share of a global batch.
    """

    valid_metric = "loss"  # lower is better
    dataset_kind = ""  # what tk-preprocess makes for this task: char, word or translation (dataset_kind.py)
    vocab_size: int = 0
    pad_idx: Optional[int] = None
    record_token_nll: bool = False  # LM tasks: keep each scored target's NLL of the next evaluation (tk-eval save_nll=)
    token_nll: Optional[np.ndarray] = None  # those NLLs (nats, float64), in the order of the targets

    def __init__(self, cfg: Any, data_dir: Optional[str], seed: int, rank: int = 0, world_size: int = 1):
        self.cfg, self.data_dir, self.seed = cfg, data_dir, seed
        self.rank, self.world_size = rank, world_size

    def has_data(self) -> bool:
        """True when the data folder exists (it may not for a dry run); it must then hold this task's kind of
        dataset, or a one-line DataError names what it holds and what the task needs."""
        if self.data_dir is None or not Path(self.data_dir).exists():
            return False
        require_dataset(self.data_dir, self.dataset_kind, self.cfg.name)
        return True

    def check_subset(self, subset: str, available: Collection[str]) -> None:
        """A one-line error unless `subset` is one of the loaded splits (or no data folder was there)."""
        if subset in available:
            return
        if not available:
            raise missing_data(self.data_dir, self.dataset_kind, self.cfg.name)
        raise ConfigError(f"unknown subset '{subset}' (valid: {', '.join(available)})")

    def build_model(self, model_cfg: Any) -> ToolkitModel:
        return MODELS.get(model_cfg.name).builder.from_config(model_cfg, self)

    def epoch_length(self, epoch: int) -> int:
        raise NotImplementedError

    def train_batch(self, epoch: int, index: int) -> Batch:
        raise NotImplementedError

    def evaluate(
        self, model: ToolkitModel, subset: str, device: torch.device, during_training: bool = False
    ) -> Dict[str, Any]:
        """Metrics on a subset; must include self.valid_metric and "tokens".

        `during_training` marks validation inside a run, where a task may score a cheaper share of the subset
        (e.g. char_lm's valid_max_tokens, translation without BLEU).
        """
        raise NotImplementedError

    def token_nll_buffer(self, n_targets: int) -> Optional[np.ndarray]:
        """Where a scorer writes per-target NLLs (NaN = not scored), when record_token_nll is set."""
        return np.full(n_targets, np.nan) if self.record_token_nll else None

    def keep_token_nll(self, buffer: Optional[np.ndarray]) -> None:
        if buffer is not None:
            self.token_nll = buffer[~np.isnan(buffer)]

    def summary(self) -> Dict[str, Any]:
        return {"task": self.cfg.name, "vocab_size": self.vocab_size}

    def reference_levels(self, subset: str) -> Dict[str, float]:
        """Simple reference levels of the validation metric on `subset` for the end-of-training report
        (e.g. n-gram bpc of a char LM), in the metric's units; none by default."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Extra iteration state beyond (epoch, index), e.g. stream caches. Empty for stateless tasks."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


def to_device(batch: Batch, device: torch.device) -> Batch:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return move(batch)
