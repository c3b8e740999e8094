"""`task.mode=stream` and `task.eval_protocol=stream`, shared by the char and word LM tasks.

Training reads the train split as `batch_size * world_size` contiguous streams, block by block
(toolkit.tasks.stream_lm_data.StreamLayout); the model (streaming_lm) carries the detached cache of its
streams across blocks, and the task checkpoints that cache per rank through its state_dict so that a
resumed run continues exactly. Evaluation reads a split as `eval_streams` contiguous sub-streams with the
cache carried, every target scored once.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.tasks.base import Batch
from toolkit.tasks.stream_lm_data import Gather, StreamLayout, score_substreams


class StreamTraining:
    """Mixin for an LM task whose config has mode, batch_size, tokens_per_sample, batches_per_epoch and
    eval_streams. Call `setup_streams` in __init__ and `attach_stream_model` in build_model."""

    cfg: Any
    seed: int
    rank: int
    world_size: int
    streams: Optional[StreamLayout] = None
    stream_model: Optional[ToolkitModel] = None  # the model whose training cache this task checkpoints

    def setup_streams(self, n_tokens: int, where: str) -> None:
        """The stream layout of a train split of `n_tokens` (stream mode only); `where` names it in errors."""
        if self.cfg.mode == "stream":
            n_streams = self.cfg.batch_size * self.world_size
            self.streams = StreamLayout.build(n_tokens, n_streams, self.cfg.tokens_per_sample, self.seed, where)

    def attach_stream_model(self, model: ToolkitModel, model_name: str) -> ToolkitModel:
        """In stream mode, check that the model carries a cache and remember it (its cache is task state)."""
        if self.cfg.mode == "stream":
            if not model.carries_stream_cache:
                raise ConfigError(
                    f"task.mode=stream needs a model that carries a cache across blocks (streaming_lm); "
                    f"model '{model_name}' has none"
                )
            self.stream_model = model
        return model

    def state_dict(self) -> Dict[str, Any]:
        """This rank's training-stream cache (stream mode), so that a resumed run continues exactly."""
        if self.stream_model is None:
            return {}
        return {"stream_cache": self.stream_model.stream_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.stream_model is not None and "stream_cache" in state:
            self.stream_model.load_stream_state(state["stream_cache"])

    def stream_epoch_length(self, epoch: int) -> int:
        assert self.streams is not None
        blocks = self.streams.blocks(epoch)
        return min(blocks, self.cfg.batches_per_epoch) if self.cfg.batches_per_epoch else blocks

    def stream_batch(self, gather: Gather, epoch: int, index: int) -> Batch:
        """Block `index` of this rank's streams; the first block of an epoch resets the model's cache."""
        assert self.streams is not None
        size = self.cfg.batch_size
        rows = slice(self.rank * size, (self.rank + 1) * size)
        inputs, targets = self.streams.batch(gather, epoch, index, rows)
        return {"net_input": {"tokens": inputs, "reset": index == 0}, "target": targets, "ntokens": targets.numel()}

    def evaluate_streams(
        self,
        model: ToolkitModel,
        stream: np.ndarray,
        device: torch.device,
        block: int,
        max_tokens: int,
        skip_target: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Mean NLL over every target of `stream` read as eval_streams sub-streams in blocks, cache carried:
        {"loss", "tokens", "protocol", "streams", "block", "seconds"}."""
        if not model.carries_stream_cache:
            raise ConfigError(
                "task.eval_protocol=stream needs a model that carries a cache across blocks (streaming_lm)"
            )
        if self.cfg.eval_streams <= 0:
            raise ConfigError(f"task.eval_streams must be positive, got {self.cfg.eval_streams}")
        start = time.perf_counter()
        n_targets = (min(len(stream), max_tokens + 1) if max_tokens else len(stream)) - 1
        per_token = self.token_nll_buffer(n_targets)  # type: ignore[attr-defined]
        nll, count = score_substreams(
            model, stream, self.cfg.eval_streams, block, device, max_tokens, skip_target, per_token
        )
        self.keep_token_nll(per_token)  # type: ignore[attr-defined]
        return {
            "loss": nll / max(count, 1),
            "tokens": count,
            "protocol": "stream",
            "streams": self.cfg.eval_streams,
            "block": block,
            "seconds": round(time.perf_counter() - start, 3),
        }
