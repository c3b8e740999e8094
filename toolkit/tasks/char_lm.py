"""Character-level language modelling (text8, enwik8): random windows for training, bpc for evaluation.

`task.mode=stream` trains on contiguous streams instead, for models that carry a cache across blocks
(streaming_lm), and `task.eval_protocol=stream` scores a split as 8 contiguous sub-streams with the cache
carried (toolkit.tasks.stream_mode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Dict, Optional

import numpy as np
import torch

from toolkit.config.ranges import bounded
from toolkit.errors import ConfigError
from toolkit.eval.lm_scoring import score_stream
from toolkit.eval.ngram_reference import ngram_references
from toolkit.models.base import ToolkitModel
from toolkit.registry import TASKS
from toolkit.tasks.base import Batch, Task
from toolkit.tasks.stream_lm_data import array_gather
from toolkit.tasks.stream_mode import StreamTraining


class CharLMMode(StrEnum):
    """How training batches are drawn."""

    random = "random"  # windows at random offsets
    stream = "stream"  # batch_size * world_size contiguous streams read block by block (models with a cache)


class CharEvalProtocol(StrEnum):
    """How a split is scored."""

    windows = "windows"  # windows of eval_window, moved by eval_stride
    exact = "exact"  # stride 1: every character sees a full window
    fast = "fast"  # eval_stride, default window // 4
    stream = "stream"  # eval_streams contiguous sub-streams, cache carried


@dataclass
class CharLMConfig:
    name: str = "char_lm"
    tokens_per_sample: int = bounded(256, ge=1)  # training window length
    batch_size: int = bounded(16, ge=1)  # windows per batch and process
    vocab_size: int = bounded(
        27, ge=1
    )  # used only when no data folder is prepared yet (dry runs): 27 text8, 256 enwik8
    batches_per_epoch: int = bounded(0, ge=0)  # 0 = train tokens / (batch_size * world_size * tokens_per_sample)
    eval_window: int = bounded(0, ge=0)  # evaluation context window (0 = tokens_per_sample)
    eval_stride: int = bounded(0, ge=0)  # evaluation stride; 0 = eval_window (non-overlapping), 1 = exact protocol
    eval_protocol: CharEvalProtocol = CharEvalProtocol.windows  # windows, exact, fast or stream (see CharEvalProtocol)
    valid_protocol: Optional[CharEvalProtocol] = None  # protocol of validation during training (null = eval_protocol);
    #                                                    when it differs, tk-eval and the final test also report it
    eval_batch_size: int = bounded(32, ge=1)  # windows per evaluation batch
    valid_max_tokens: int = bounded(0, ge=0)  # score at most this many tokens during training validation (0 = all)
    eval_max_tokens: int = bounded(
        0, ge=0
    )  # score only the first this many tokens in tk-eval / the final evaluation (0 = all)
    mode: CharLMMode = CharLMMode.random  # training batches: random windows or contiguous streams (see CharLMMode)
    eval_streams: int = bounded(
        8, ge=1
    )  # eval_protocol=stream: contiguous sub-streams a split is cut into (cache carried)


@TASKS.register("char_lm", CharLMConfig)
class CharLMTask(StreamTraining, Task):
    valid_metric = "bpc"
    dataset_kind = "char"

    def __init__(self, cfg: Any, data_dir: Optional[str], seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, data_dir, seed, rank, world_size)
        self.splits: Dict[str, np.ndarray] = {}
        if self.has_data():
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
        if "train" in self.splits:
            self.setup_streams(len(self.splits["train"]), f"{data_dir}/train")

    def build_model(self, model_cfg: Any) -> ToolkitModel:
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
        self, model: ToolkitModel, subset: str, device: torch.device, during_training: bool = False
    ) -> Dict[str, Any]:
        self.check_subset(subset, self.splits)
        valid_protocol = self.cfg.valid_protocol or self.cfg.eval_protocol
        if during_training:
            return self._evaluate(model, subset, device, valid_protocol, self.cfg.valid_max_tokens)
        metrics = self._evaluate(model, subset, device, self.cfg.eval_protocol, self.cfg.eval_max_tokens)
        if valid_protocol != self.cfg.eval_protocol:  # e.g. T64: the paper's exact number and the fast one
            recording, self.record_token_nll = self.record_token_nll, False
            other = self._evaluate(model, subset, device, valid_protocol, self.cfg.eval_max_tokens)
            self.record_token_nll = recording
            metrics[f"bpc_{valid_protocol}"] = other["bpc"]
        return metrics

    def _evaluate(
        self, model: ToolkitModel, subset: str, device: torch.device, protocol: str, max_tokens: int
    ) -> Dict[str, Any]:
        window = self.cfg.eval_window or self.cfg.tokens_per_sample
        if protocol == "stream":
            return self._evaluate_streams(model, subset, device, window, max_tokens)
        stride = eval_stride(protocol, self.cfg.eval_stride, window)
        start = time.perf_counter()
        data = self.splits[subset][: max_tokens + 1] if max_tokens else self.splits[subset]
        per_token = self.token_nll_buffer(len(data) - 1)
        nll, count = score_stream(
            lambda x: model(x)[0], data, window, stride, self.cfg.eval_batch_size, device, None, per_token
        )
        self.keep_token_nll(per_token)
        loss = nll / max(count, 1)
        return {
            "subset": subset,
            "bpc": loss / math.log(2),
            "loss": loss,
            "tokens": count,
            "protocol": protocol,
            "window": window,
            "stride": stride,
            "context": window - stride,
            "seconds": round(time.perf_counter() - start, 3),
        }

    def reference_levels(self, subset: str) -> Dict[str, float]:
        """Unigram/bigram/trigram bpc (add-one count tables fitted on train) on the tokens the final
        evaluation scores (the first eval_max_tokens when set)."""
        if "train" not in self.splits or subset not in self.splits:
            return {}
        tokens = self.splits[subset][: self.cfg.eval_max_tokens or None]
        return ngram_references(self.splits["train"], tokens, self.vocab_size)

    def _evaluate_streams(
        self, model: ToolkitModel, subset: str, device: torch.device, block: int, max_tokens: int
    ) -> Dict[str, Any]:
        """bpc over every target, the split read as eval_streams sub-streams in blocks, cache carried."""
        metrics = self.evaluate_streams(model, self.splits[subset], device, block, max_tokens)
        return {"subset": subset, "bpc": metrics["loss"] / math.log(2), **metrics}


def eval_stride(protocol: str, stride: int, window: int) -> int:
    """The stride of an evaluation protocol; every character after the first window sees >= window - stride."""
    if protocol == "exact":
        return 1
    stride = stride or (max(1, window // 4) if protocol == "fast" else window)
    if not 1 <= stride <= window:
        raise ConfigError(f"task.eval_stride={stride} must be between 1 and the window ({window})")
    return stride
