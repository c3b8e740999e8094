"""Machine translation: token-bucketed batches of sentence pairs, label-smoothed training, BLEU evaluation."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config.ranges import bounded
from toolkit.data.atomic import atomic_write_bytes
from toolkit.errors import DataError
from toolkit.eval.beam_search import GenerationConfig, generate
from toolkit.eval.bleu import BleuProtocol, corpus_bleu, read_lines
from toolkit.models.base import ToolkitModel
from toolkit.registry import TASKS
from toolkit.tasks.base import Batch, Task, to_device

log = logging.getLogger(__name__)


class Overlong(StrEnum):
    """What happens to an example longer than the model's positions."""

    skip = "skip"  # skipped, with a warning and a count
    fail = "fail"  # an error naming the example


@dataclass
class TranslationConfig:
    name: str = "translation"
    max_tokens: int = bounded(4096, ge=1)  # tokens per batch and process (padded source or target, whichever is larger)
    max_sentences: Optional[int] = bounded(None, ge=1)  # also cap sentences per batch (null = no cap)
    max_source_positions: int = bounded(1024, ge=2)  # longer examples are skipped or fail (see overlong)
    max_target_positions: int = bounded(1024, ge=2)
    overlong: Overlong = Overlong.skip  # skip (with a warning and a count) or fail (error naming the example)
    vocab_size: int = bounded(
        10000, ge=5
    )  # joint vocabulary size, used only when no data folder is prepared (dry runs)
    eval_max_tokens: int = bounded(6000, ge=1)  # tokens per batch when scoring and generating
    eval_bleu: bool = True  # BLEU in tk-eval and the final test (beam search over the subset)
    validate_bleu: bool = False  # also BLEU at each validation during training (slower)
    bleu_protocol: BleuProtocol = (
        BleuProtocol.sacrebleu
    )  # sacrebleu (detokenized, 13a), tokenized_lower (IWSLT14), tokenized_compound (WMT14)
    hypotheses: Optional[str] = None  # write the detokenized hypotheses here (one per line, in corpus order)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@TASKS.register("translation", TranslationConfig)
class TranslationTask(Task):
    valid_metric = "nll"
    dataset_kind = "translation"

    def __init__(self, cfg: Any, data_dir: Optional[str], seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, data_dir, seed, rank, world_size)
        self.bos_idx, self.pad_idx, self.eos_idx = 0, 1, 2  # the spm ids of toolkit.data.spm.SpmVocab
        self.datasets: Dict[str, tuple[Any, Any]] = {}
        self._epoch_batches: tuple[int, List[np.ndarray]] = (0, [])
        if not self.has_data():
            self.vocab_size = cfg.vocab_size
            return
        from toolkit.data.indexed_dataset import IndexedDataset
        from toolkit.data.spm import SpmVocab

        meta_path = Path(data_dir) / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{meta_path} not found: is {data_dir} a folder made by tk-preprocess?")
        self.meta = json.loads(meta_path.read_text())
        self.src, self.tgt = self.meta["src_lang"], self.meta["tgt_lang"]
        self.vocab = SpmVocab(Path(data_dir) / "spm.model")
        self.vocab_size = len(self.vocab)
        self.bos_idx, self.pad_idx, self.eos_idx = self.vocab.bos, self.vocab.pad, self.vocab.eos
        for split in ("train", "valid", "test"):
            prefix = Path(data_dir) / f"{split}.{self.src}-{self.tgt}"
            if Path(f"{prefix}.{self.src}.idx").exists():
                self.datasets[split] = (IndexedDataset(f"{prefix}.{self.src}"), IndexedDataset(f"{prefix}.{self.tgt}"))
        if "train" not in self.datasets:
            raise DataError(f"no training data in {data_dir} (expected train.{self.src}-{self.tgt}.{self.src}.idx)")

    def summary(self) -> Dict[str, Any]:
        out = super().summary()
        if self.datasets:
            out.update({"pairs": {k: len(v[0]) for k, v in self.datasets.items()}, "langs": f"{self.src}-{self.tgt}"})
        return out

    # ---- training batches ----------------------------------------------------------------------------
    def _batches(self, split: str, epoch: int, shuffle_seed: int) -> List[np.ndarray]:
        from toolkit.data.token_batching import batches_for_epoch

        src, tgt = self.datasets[split]
        return batches_for_epoch(
            src.sizes,
            tgt.sizes,
            self.cfg.max_tokens if split == "train" else self.cfg.eval_max_tokens,
            shuffle_seed,
            epoch,
            max_sentences=self.cfg.max_sentences,
            max_source_positions=self.cfg.max_source_positions - 1,  # the collater appends eos
            max_target_positions=self.cfg.max_target_positions - 1,
            overlong=self.cfg.overlong,
        )

    def _rank_batches(self, epoch: int) -> List[np.ndarray]:
        """This rank's batches of the epoch: global batch k*world + rank at step k.

        A trailing group smaller than world_size is dropped (logged), so every rank has the same number of
        non-empty batches; in one process nothing is dropped.
        """
        if self._epoch_batches[0] != epoch:
            batches = self._batches("train", epoch, self.seed)
            usable = len(batches) - len(batches) % self.world_size
            if usable < len(batches):
                log.info(
                    "epoch %d: %d batch(es) left over for %d ranks are skipped",
                    epoch,
                    len(batches) - usable,
                    self.world_size,
                )
            self._epoch_batches = (epoch, batches[self.rank : usable : self.world_size])
        return self._epoch_batches[1]

    def epoch_length(self, epoch: int) -> int:
        return len(self._rank_batches(epoch))

    def _collate(self, split: str, indices: np.ndarray) -> Batch:
        from toolkit.data.token_batching import collate

        src, tgt = self.datasets[split]
        batch = collate(indices, src, tgt, self.pad_idx, self.eos_idx)
        return {
            "net_input": {"src_tokens": batch["src_tokens"], "prev_output_tokens": batch["prev_output_tokens"]},
            "target": batch["target"],
            "ntokens": batch["ntokens"],
            "id": batch["id"],
        }

    def train_batch(self, epoch: int, index: int) -> Batch:
        return self._collate("train", self._rank_batches(epoch)[index])

    # ---- evaluation ----------------------------------------------------------------------------------
    def _check_subset(self, subset: str) -> None:
        self.check_subset(subset, self.datasets)

    @torch.no_grad()
    def score(self, model: ToolkitModel, subset: str, device: torch.device) -> Dict[str, float]:
        """Teacher-forced NLL per target token (nats), with perplexity."""
        nll, tokens = 0.0, 0
        for indices in self._batches(subset, 0, 0):
            batch = to_device(self._collate(subset, indices), device)
            logits, _ = model(**batch["net_input"])
            nll += F.cross_entropy(
                logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=self.pad_idx, reduction="sum"
            ).item()
            tokens += batch["ntokens"]
        return {"nll": nll / max(tokens, 1), "ppl": math.exp(min(nll / max(tokens, 1), 50)), "tokens": tokens}

    @torch.no_grad()
    def translate(self, model: ToolkitModel, subset: str, device: torch.device) -> List[str]:
        """Beam-search translations of a subset, detokenized, in corpus order."""
        src, _ = self.datasets[subset]
        hypotheses: List[str] = [""] * len(src)
        for indices in self._batches(subset, 0, 0):
            batch = to_device(self._collate(subset, indices), device)
            results = generate(model, batch["net_input"]["src_tokens"], self.cfg.generation)
            for example, nbest in zip(batch["id"].tolist(), results):
                hypotheses[example] = self.vocab.decode(nbest[0].tokens.tolist())
        return hypotheses

    def evaluate(
        self, model: ToolkitModel, subset: str, device: torch.device, during_training: bool = False
    ) -> Dict[str, Any]:
        self._check_subset(subset)
        metrics: Dict[str, Any] = {"subset": subset, **self.score(model, subset, device)}
        if self.cfg.eval_bleu and (self.cfg.validate_bleu or not during_training):
            hypotheses = self.translate(model, subset, device)
            references = read_lines(Path(self.data_dir) / f"{subset}.{self.tgt}.txt")
            result = corpus_bleu(hypotheses, references, self.cfg.bleu_protocol, self.tgt)
            metrics.update(
                {
                    "bleu": result.score,
                    "bleu_signature": result.signature,
                    "bleu_details": result.details,
                    "beam": self.cfg.generation.beam,
                    "sentences": len(hypotheses),
                }
            )
            if self.cfg.hypotheses:
                atomic_write_bytes(self.cfg.hypotheses, ("\n".join(hypotheses) + "\n").encode("utf-8"))
                metrics["hypotheses"] = self.cfg.hypotheses
        return metrics
