"""Character-level language modelling (text8, enwik8): random windows for training, bpc for evaluation.

`task.mode=stream` trains on contiguous streams instead, for models that carry a cache across blocks
(streaming_lm), and `task.eval_protocol=stream` scores a split as 8 contiguous sub-streams with the cache
carried (toolkit.tasks.stream_mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from toolkit.errors import ConfigError
from toolkit.eval.lm_scoring import score_stream
from toolkit.eval.ngram_reference import ngram_references
from toolkit.registry import TASKS
from toolkit.tasks.base import Batch, Task
from toolkit.tasks.stream_lm_data import array_gather
from toolkit.tasks.stream_mode import StreamTraining


@dataclass
class CharLMConfig:
    name: str = "char_lm"
    tokens_per_sample: int = 256  # training window length
    batch_size: int = 16  # windows per batch and process
    vocab_size: int = 27  # used only when no data folder is prepared yet (dry runs): 27 text8, 256 enwik8
    batches_per_epoch: int = 0  # 0 = train tokens / (batch_size * world_size * tokens_per_sample)
    eval_window: int = 0  # evaluation context window (0 = tokens_per_sample)
    eval_stride: int = 0  # evaluation stride; 0 = eval_window (non-overlapping), 1 = exact protocol
    eval_protocol: str = "windows"  # 'windows' (eval_stride as set), 'exact' (stride 1: every character sees
    #                                 a full window) or 'fast' (eval_stride, default window // 4)
    eval_batch_size: int = 32  # windows per evaluation batch
    valid_max_tokens: int = 0  # score at most this many tokens during training validation (0 = all)
    eval_max_tokens: int = 0  # score only the first this many tokens in tk-eval / the final evaluation (0 = all)
    mode: str = "random"  # training batches: 'random' windows, or 'stream': batch_size * world_size contiguous
    #                       streams read block by block (tokens_per_sample), for models with a cache (streaming_lm)
    eval_streams: int = 8  # eval_protocol=stream: contiguous sub-streams a split is cut into (cache carried)


@TASKS.register("char_lm", CharLMConfig)
class CharLMTask(StreamTraining, Task):
    valid_metric = "bpc"

    def __init__(self, cfg: Any, data_dir: Optional[str], seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, data_dir, seed, rank, world_size)
        self.splits: Dict[str, np.ndarray] = {}
        if data_dir is not None and Path(data_dir).exists():
            from toolkit.data.char_corpus import load_char_split, load_vocab

            self.vocab = load_vocab(data_dir)
            self.vocab_size = len(self.vocab)
            for split in ("train", "valid", "test"):
                self.splits[split] = load_char_split(data_dir, split)
            if len(self.splits["train"]) <= cfg.tokens_per_sample + 1:
                raise ConfigError(
                    f"task.tokens_per_sample={cfg.tokens_per_sample} is longer than the training data in {data_dir}"
                )
        else:
            self.vocab_size = cfg.vocab_size
        if cfg.mode not in MODES:
            raise ConfigError(f"task.mode: '{cfg.mode}' (valid: {', '.join(MODES)})")
        if "train" in self.splits:
            self.setup_streams(len(self.splits["train"]), f"{data_dir}/train")

    def build_model(self, model_cfg: Any) -> nn.Module:
        return self.attach_stream_model(super().build_model(model_cfg), model_cfg.name)

    def epoch_length(self, epoch: int) -> int:
        if self.streams is not None:
            return self.stream_epoch_length(epoch)
        if self.cfg.batches_per_epoch:
            return self.cfg.batches_per_epoch
        per_batch = self.cfg.batch_size * self.world_size * self.cfg.tokens_per_sample
        return max(1, len(self.splits["train"]) // per_batch)

    def train_batch(self, epoch: int, index: int) -> Batch:
        """Windows at random offsets; the global batch is drawn from (seed, epoch, index), each rank takes its rows.
        Stream mode: block `index` of this rank's streams; the first block of an epoch resets the cache."""
        if self.streams is not None:
            return self.stream_batch(array_gather(self.splits["train"]), epoch, index)
        data, window, size = self.splits["train"], self.cfg.tokens_per_sample, self.cfg.batch_size
        rng = np.random.default_rng([self.seed, epoch, index])
        offsets = rng.integers(0, len(data) - window - 1, size=size * self.world_size)
        offsets = offsets[self.rank * size : (self.rank + 1) * size]
        chunk = torch.from_numpy(data[offsets[:, None] + np.arange(window + 1)].astype(np.int64))
        return {"net_input": {"tokens": chunk[:, :-1]}, "target": chunk[:, 1:], "ntokens": size * window}

    def evaluate(
        self, model: nn.Module, subset: str, device: torch.device, during_training: bool = False
    ) -> Dict[str, Any]:
        if subset not in self.splits:
            raise ConfigError(f"unknown subset '{subset}' (valid: {', '.join(self.splits)})")
        window = self.cfg.eval_window or self.cfg.tokens_per_sample
        max_tokens = self.cfg.valid_max_tokens if during_training else self.cfg.eval_max_tokens
        if self.cfg.eval_protocol == "stream":
            return self._evaluate_streams(model, subset, device, window, max_tokens)
        stride = eval_stride(self.cfg.eval_protocol, self.cfg.eval_stride, window)
        start = time.perf_counter()
        nll, count = score_stream(
            lambda x: model(x)[0], self.splits[subset], window, stride, self.cfg.eval_batch_size, device, max_tokens
        )
        loss = nll / max(count, 1)
        return {"subset": subset, "bpc": loss / math.log(2), "loss": loss, "tokens": count,
                "protocol": self.cfg.eval_protocol, "window": window, "stride": stride, "context": window - stride,
                "seconds": round(time.perf_counter() - start, 3)}

    def reference_levels(self, subset: str) -> Dict[str, float]:
        """Unigram/bigram/trigram bpc (add-one count tables fitted on train) on the tokens the final
        evaluation scores (the first eval_max_tokens when set)."""
        if "train" not in self.splits or subset not in self.splits:
            return {}
        tokens = self.splits[subset][: self.cfg.eval_max_tokens or None]
        return ngram_references(self.splits["train"], tokens, self.vocab_size)

    def _evaluate_streams(
        self, model: nn.Module, subset: str, device: torch.device, block: int, max_tokens: int
    ) -> Dict[str, Any]:
        """bpc over every target, the split read as eval_streams sub-streams in blocks, cache carried."""
        metrics = self.evaluate_streams(model, self.splits[subset], device, block, max_tokens)
        return {"subset": subset, "bpc": metrics["loss"] / math.log(2), **metrics}


PROTOCOLS = ("windows", "exact", "fast", "stream")
MODES = ("random", "stream")


def eval_stride(protocol: str, stride: int, window: int) -> int:
    """The stride of an evaluation protocol; every character after the first window sees >= window - stride."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"task.eval_protocol: '{protocol}' (valid: {', '.join(PROTOCOLS)})")
    if protocol == "exact":
        return 1
    stride = stride or (max(1, window // 4) if protocol == "fast" else window)
    if not 1 <= stride <= window:
        raise ConfigError(f"task.eval_stride={stride} must be between 1 and the window ({window})")
    return stride
