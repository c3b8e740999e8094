"""Word-level language modelling (WikiText): contiguous token blocks for training, perplexity for evaluation.

The stream of a split is the corpus' ids (`<eos>` at every line end) with one `<eos>` put before it, as
fairseq does: every token of the split is a target, the first one predicted from that `<eos>`.

Training (fairseq's `--sample-break-mode none`): the train stream is cut into consecutive blocks of
`tokens_per_sample` targets; each epoch visits them in an order shuffled by (seed, epoch). A global batch
is `batch_size * world_size` blocks; each rank takes its `batch_size` rows. The last partial block of the
stream is not trained on (fewer than tokens_per_sample tokens), so no batch holds padding.

Evaluation (fairseq's `eval-lm --context-window C`): the split is cut into blocks of S = tokens_per_sample - C
new targets; each block is scored after up to C earlier tokens of context, so a window holds at most
tokens_per_sample inputs and every target is scored exactly once. C = 0 gives non-overlapping blocks.
Perplexity = exp(mean NLL over all targets of the split, <eos> included).

Streaming, for the models that carry a cache across blocks (streaming_lm; toolkit.tasks.stream_mode):
`task.mode=stream` trains on `batch_size * world_size` contiguous streams of the train stream read block by
block, and `task.eval_protocol=stream` scores a split as `eval_streams` contiguous sub-streams with the cache
carried (the all-attention paper's protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from toolkit.config.ranges import bounded
from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.registry import TASKS
from toolkit.tasks.base import Batch, Task
from toolkit.tasks.stream_mode import StreamTraining

EOS, PAD = 2, 1  # toolkit.data.word_corpus ids (fairseq's)


class LMMode(StrEnum):
    """How training batches are drawn."""

    blocks = "blocks"  # the train stream's blocks, shuffled
    stream = "stream"  # batch_size * world_size contiguous streams read block by block (models with a cache)


class LMEvalProtocol(StrEnum):
    """How a split is scored."""

    context_window = "context_window"  # fairseq's eval-lm: blocks after up to context_window tokens of history
    stream = "stream"  # eval_streams contiguous sub-streams in blocks of tokens_per_sample, cache carried


@dataclass
class LanguageModelingConfig:
    name: str = "language_modeling"
    tokens_per_sample: int = bounded(
        512, ge=1
    )  # block length in tokens: training blocks and the longest evaluation window
    batch_size: int = bounded(8, ge=1)  # blocks per batch and process
    vocab_size: int = bounded(
        0, ge=0
    )  # used only when no data folder is prepared yet (dry runs): 267744 for WikiText-103
    batches_per_epoch: int = bounded(0, ge=0)  # 0 = train blocks // (batch_size * world_size)
    context_window: int = bounded(
        0, ge=0
    )  # evaluation (tk-eval, final test): blocks of tokens_per_sample - context_window
    #                          new tokens, each after up to context_window tokens of history; 0 = no overlap
    valid_context_window: int = bounded(0, ge=0)  # the same for validation during training (0: cheap, non-overlapping)
    eval_batch_size: int = bounded(8, ge=1)  # windows per evaluation batch
    valid_max_tokens: int = bounded(0, ge=0)  # score at most this many targets during training validation (0 = all)
    mode: LMMode = LMMode.blocks  # training batches: shuffled blocks or contiguous streams (see LMMode)
    eval_protocol: LMEvalProtocol = LMEvalProtocol.context_window  # context_window or stream (see LMEvalProtocol)
    eval_streams: int = bounded(8, ge=1)  # eval_protocol=stream: contiguous sub-streams a split is cut into
    eval_eos: bool = True  # score the <eos> (end-of-line) targets; false: they are context only, as the papers
    #                        that report word perplexity without end-of-line (e.g. the all-attention paper's 20.6)


@TASKS.register("language_modeling", LanguageModelingConfig)
class LanguageModelingTask(StreamTraining, Task):
    valid_metric = "ppl"
    dataset_kind = "word"

    def __init__(self, cfg: Any, data_dir: Optional[str], seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, data_dir, seed, rank, world_size)
        self.pad_idx = PAD  # never in the data (a literal <pad> is <unk>); the criterion ignores it anyway
        self.splits: Dict[str, np.ndarray] = {}
        self._order_cache: tuple[int, np.ndarray] | None = None
        if self.has_data():
            from toolkit.data.word_corpus import load_dictionary, load_word_split

            self.vocab_size = len(load_dictionary(data_dir))
            for split in ("train", "valid", "test"):
                self.splits[split] = load_word_split(data_dir, split)
            # the train stream is <eos> + the split's tokens
            self.setup_streams(len(self.splits["train"]) + 1, f"{data_dir}/train")
            if self.streams is None and self.n_blocks < cfg.batch_size * world_size:
                raise ConfigError(
                    f"{data_dir}: the train split has {self.n_blocks} blocks of task.tokens_per_sample="
                    f"{cfg.tokens_per_sample}, fewer than one batch (task.batch_size={cfg.batch_size} x "
                    f"{world_size} processes)"
                )
        elif cfg.vocab_size > 0:
            self.vocab_size = cfg.vocab_size
        else:
            raise ConfigError(
                f"data={data_dir}: no such folder; prepare it with tk-preprocess, or set task.vocab_size for a dry run"
            )

    @property
    def n_blocks(self) -> int:
        return len(self.splits["train"]) // self.cfg.tokens_per_sample

    def build_model(self, model_cfg: Any) -> ToolkitModel:
        longest = self.cfg.tokens_per_sample
        if getattr(model_cfg, "max_positions", longest) < longest:
            raise ConfigError(
                f"task.tokens_per_sample={longest} is longer than model.max_positions={model_cfg.max_positions}"
            )
        return self.attach_stream_model(super().build_model(model_cfg), model_cfg.name)

    def epoch_length(self, epoch: int) -> int:
        if self.streams is not None:
            return self.stream_epoch_length(epoch)
        if self.cfg.batches_per_epoch:
            return self.cfg.batches_per_epoch
        return self.n_blocks // (self.cfg.batch_size * self.world_size)

    def _order(self, epoch: int) -> np.ndarray:
        """The block order of an epoch: a permutation drawn from (seed, epoch), kept for the current epoch."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks))
        return self._order_cache[1]

    def train_batch(self, epoch: int, index: int) -> Batch:
        """Rows rank*B..(rank+1)*B of global batch `index` of the epoch's shuffled blocks (stream mode: block
        `index` of this rank's contiguous streams)."""
        if self.streams is not None:
            train = self.splits["train"]
            return self.stream_batch(lambda starts, length: stream_slice(train, starts, length), epoch, index)
        size, length = self.cfg.batch_size, self.cfg.tokens_per_sample
        order = self._order(epoch)
        first = (index * self.world_size + self.rank) * size
        # modulo: batches_per_epoch beyond one pass over the blocks cycles through the same order
        blocks = order[np.arange(first, first + size) % len(order)]
        # stream position p is split token p - 1; position 0 is the <eos> before the split
        chunk = torch.from_numpy(stream_slice(self.splits["train"], blocks * length, length + 1))
        # no padding in a batch: every target is scored, so ntokens = size * length
        return {"net_input": {"tokens": chunk[:, :-1]}, "target": chunk[:, 1:], "ntokens": size * length}

    def evaluate(
        self, model: ToolkitModel, subset: str, device: torch.device, during_training: bool = False
    ) -> Dict[str, Any]:
        self.check_subset(subset, self.splits)
        tokens = self.splits[subset]
        if during_training and self.cfg.valid_max_tokens:
            tokens = tokens[: self.cfg.valid_max_tokens]
        if self.cfg.eval_protocol == "stream":
            stream = np.concatenate([[EOS], tokens]).astype(np.int64)  # every token of the split is a target
            metrics = self.evaluate_streams(
                model,
                stream,
                device,
                self.cfg.tokens_per_sample,
                max_tokens=0,
                skip_target=None if self.cfg.eval_eos else EOS,
            )
            return {
                "subset": subset,
                "ppl": math.exp(min(metrics["loss"], 50.0)),
                **metrics,
                "eos_scored": self.cfg.eval_eos,
            }
        context = self.cfg.valid_context_window if during_training else self.cfg.context_window
        key = "task.valid_context_window" if during_training else "task.context_window"
        if not 0 <= context < self.cfg.tokens_per_sample:
            raise ConfigError(f"{key}={context} must be >= 0 and < task.tokens_per_sample={self.cfg.tokens_per_sample}")
        per_token = self.token_nll_buffer(len(tokens))
        nll, count = score_with_context(
            model,
            tokens,
            self.cfg.tokens_per_sample,
            context,
            self.cfg.eval_batch_size,
            device,
            None if self.cfg.eval_eos else EOS,
            per_token,
        )
        self.keep_token_nll(per_token)
        loss = nll / max(count, 1)
        return {
            "subset": subset,
            "ppl": math.exp(min(loss, 50.0)),
            "loss": loss,
            "tokens": count,
            "tokens_per_sample": self.cfg.tokens_per_sample,
            "context_window": context,
            "eos_scored": self.cfg.eval_eos,
        }

    def summary(self) -> Dict[str, Any]:
        summary = {**super().summary(), "tokens_per_sample": self.cfg.tokens_per_sample}
        if self.splits:
            summary.update({f"{name}_tokens": len(tokens) for name, tokens in self.splits.items()})
        return summary


def stream_slice(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """int64 rows stream[s : s + length] of the stream <eos> + tokens; positions past its end repeat its last token.

    One vectorised gather from the (memory-mapped) split; the stream itself is never materialised.
    """
    index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length, dtype=np.int64) - 1
    index = np.minimum(index, len(tokens) - 1)
    rows = np.asarray(tokens[np.maximum(index, 0)], dtype=np.int64)
    rows[index < 0] = EOS
    return rows


def context_window_plan(n_targets: int, tokens_per_sample: int, context_window: int) -> tuple[np.ndarray, ...]:
    """fairseq's eval-lm windows over n_targets targets: per window (input start, first target, end target).

    Window k scores targets [k*S, min((k+1)*S, n)) with S = tokens_per_sample - context_window, after the
    inputs from max(0, k*S - context_window): up to context_window tokens of context, at most
    tokens_per_sample inputs. Target t is predicted from stream positions input_start..t (its own history).
    """
    if not 0 <= context_window < tokens_per_sample:
        raise ValueError(f"context_window must be in [0, tokens_per_sample); got {context_window}, {tokens_per_sample}")
    step = tokens_per_sample - context_window
    first = np.arange(0, n_targets, step, dtype=np.int64)
    end = np.minimum(first + step, n_targets)
    return np.maximum(first - context_window, 0), first, end


@torch.no_grad()
def score_with_context(
    model: ToolkitModel,
    tokens: np.ndarray,
    tokens_per_sample: int,
    context_window: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    skip_target: Optional[int] = None,
    per_token: Optional[np.ndarray] = None,
) -> tuple[float, int]:
    """Summed NLL (nats, float64) over every token of `tokens` (the stream <eos> + tokens) and the count.

    Targets equal to `skip_target` (<eos> for the papers that exclude end-of-line) are context, not scored;
    `per_token` (float64, one entry per token) receives each scored NLL.

    The model's `output_nll(output, target)` is used when it scores its own output (adaptive softmax: hidden
    states), else cross-entropy over forward's logits. Only the scored positions go through the output layer.
    Windows shorter than tokens_per_sample (the first ones, the last) are filled to the batch width with later
    tokens; a causal model never lets those affect the scored positions.
    """
    n_targets = len(tokens)
    if n_targets == 0:
        return 0.0, 0
    starts, first, end = context_window_plan(n_targets, tokens_per_sample, context_window)
    width = min(tokens_per_sample, n_targets)
    positions = torch.arange(width, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for i in tqdm(range(0, len(starts), batch_size), desc="scoring", unit="batch", disable=None, leave=False):
        rows = slice(i, i + batch_size)
        chunk = torch.from_numpy(stream_slice(tokens, starts[rows], width + 1)).to(device)
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        low = torch.from_numpy(first[rows] - starts[rows]).to(device)
        high = torch.from_numpy(end[rows] - starts[rows]).to(device)
        keep = (positions[None, :] >= low[:, None]) & (positions[None, :] < high[:, None])
        if skip_target is not None:
            keep &= targets != skip_target
        output = model(inputs)[0][keep]
        if model.scores_own_output:
            nll = model.output_nll(output, targets[keep])
        else:
            nll = F.cross_entropy(output.float(), targets[keep], reduction="none")
        if per_token is not None:
            target_index = torch.from_numpy(starts[rows]).to(device)[:, None] + positions[None, :]
            per_token[target_index[keep].cpu().numpy()] = nll.double().cpu().numpy()
        total += nll.double().sum()
        count += nll.numel()
    return float(total), count
