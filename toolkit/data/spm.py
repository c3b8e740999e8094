"""Joint sentencepiece vocabularies: train a model, encode/decode lines, binarize text files in parallel.

Special ids follow fairseq's dictionary order: bos=0, pad=1, eos=2, unk=3; ordinary pieces start at 4.
Datasets store pieces only; eos/bos are added by the batch collater (toolkit/data/token_batching.py).

Text is normalized by the recipes before it reaches sentencepiece (toolkit/data/parallel_corpus.py), so the
model is trained with the `identity` normalization rule: `decode(encode(x)) == x` for every normalized line
whose characters occur in the training text (character_coverage=1.0 keeps them all).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.pool
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from toolkit.data.indexed_dataset import IndexedDatasetBuilder
from toolkit.errors import ConfigError

BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPECIAL_IDS = {"bos": BOS, "pad": PAD, "eos": EOS, "unk": UNK}
MAX_SENTENCE_BYTES = 1 << 16  # sentencepiece skips longer training lines; 250-word WMT lines stay in


@dataclass
class SpmTrainSettings:
    """How a joint model is learned (recorded in meta.json)."""

    vocab_size: int = 10000
    """Pieces including the 4 special ids."""
    model_type: str = "bpe"
    """sentencepiece model type: bpe or unigram."""
    character_coverage: float = 1.0
    """1.0: every character of the training text gets a piece (right for Latin-script pairs)."""
    seed: int = 1
    """sentencepiece's random generator seed (training itself is deterministic for BPE)."""
    num_threads: int = 1
    """Training threads."""


def train_spm(inputs: Sequence[Path], model_prefix: Path, settings: SpmTrainSettings) -> Path:
    """Learn a model on every line of `inputs` (already sampled and normalized); returns PREFIX.model.

    Sampling is done by the caller, deterministically, so sentencepiece reads its input whole and in order.
    """
    spm.set_random_generator_seed(settings.seed)
    try:
        with open(os.devnull, "w") as sink:
            spm.SentencePieceTrainer.train(
                input=[str(path) for path in inputs],
                model_prefix=str(model_prefix),
                vocab_size=settings.vocab_size,
                model_type=settings.model_type,
                character_coverage=settings.character_coverage,
                bos_id=BOS,
                pad_id=PAD,
                eos_id=EOS,
                unk_id=UNK,
                normalization_rule_name="identity",
                input_sentence_size=0,
                shuffle_input_sentence=False,
                max_sentence_length=MAX_SENTENCE_BYTES,
                num_threads=max(1, settings.num_threads),
                logstream=sink,
            )
    except RuntimeError as error:
        # e.g. "Vocabulary size too high (40000). Please set it to a value <= 12345." on a small corpus
        reason = str(error).split("] ", 1)[-1].strip()
        raise ConfigError(f"vocab_size={settings.vocab_size}: sentencepiece training failed: {reason}") from None
    return Path(f"{model_prefix}.model")


IdSequence = Union[Sequence[int], np.ndarray, "torch.Tensor"]  # noqa: F821


class SpmVocab:
    """A trained sentencepiece model seen as a fairseq-style dictionary."""

    bos, pad, eos, unk = BOS, PAD, EOS, UNK

    def __init__(self, model_file: Union[str, os.PathLike]):
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        if [self.sp.bos_id(), self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()] != [BOS, PAD, EOS, UNK]:
            raise ConfigError(f"{self.model_file}: special ids are not bos=0, pad=1, eos=2, unk=3")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, line: str) -> list[int]:
        """Piece ids of one (normalized) line, without bos/eos."""
        return self.sp.encode(line)

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids of many lines (one sentencepiece call)."""
        return self.sp.encode(list(lines), num_threads=1)

    def encode_flat(
        self, lines: Sequence[str], dtype: Union[np.dtype, str] = np.int64
    ) -> tuple[np.ndarray, np.ndarray]:
        """(all ids concatenated, per-line sizes) as numpy arrays, ready for IndexedDatasetBuilder.add_items."""
        ids = self.encode_batch(lines)
        sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(sizes.sum()))
        return flat, sizes

    def decode(self, ids: IdSequence) -> str:
        """Text of a sequence of ids; bos, pad and eos are dropped, unk decodes to ' ⁇ '."""
        array = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids, dtype=np.int64).reshape(-1)
        keep = array[(array != BOS) & (array != PAD) & (array != EOS)]
        return self.sp.decode(keep.tolist())

    def pieces(self, ids: IdSequence) -> list[str]:
        """Piece strings (for debugging and logs)."""
        return [self.sp.id_to_piece(int(i)) for i in np.asarray(ids).reshape(-1)]


# ---- parallel binarization -------------------------------------------------------------------------------

_WORKER_VOCAB: Optional[SpmVocab] = None


def _init_worker(model_file: str) -> None:
    global _WORKER_VOCAB
    _WORKER_VOCAB = SpmVocab(model_file)


def _encode_chunk(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_VOCAB is not None
    return _WORKER_VOCAB.encode_flat(lines, np.int32)


def _chunks(path: Path, chunk_lines: int) -> Iterator[list[str]]:
    with open(path, encoding="utf-8", newline="\n") as handle:
        while True:
            chunk = [line.rstrip("\n") for line in itertools.islice(handle, chunk_lines)]
            if not chunk:
                return
            yield chunk


def _ordered_parallel(
    pool: "multiprocessing.pool.Pool", chunks: Iterator[list[str]], in_flight: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like pool.imap, but reads ahead at most `in_flight` chunks (imap would read the whole file)."""
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


@dataclass
class BinarizeStats:
    """What one binarized file holds."""

    sentences: int
    tokens: int
    unk: int


class Binarizer:
    """Encode text files line by line with a sentencepiece model into indexed datasets.

    workers > 1: one process pool for all files (opened by `with`), each worker loading the model once;
    chunks are encoded in parallel and written in file order, with a bounded read-ahead so memory stays flat
    whatever the file size. The pool uses spawn: workers need only sentencepiece and numpy, and never
    inherit the parent's threads.
    """

    def __init__(self, model_file: Path, dtype: np.dtype, workers: int = 1, chunk_lines: int = 10000):
        self.model_file = Path(model_file)
        self.dtype = np.dtype(dtype)
        self.workers = workers
        self.chunk_lines = chunk_lines
        self._pool: Optional[multiprocessing.pool.Pool] = None
        self._vocab: Optional[SpmVocab] = None

    def __enter__(self) -> "Binarizer":
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(str(self.model_file),))
        else:
            self._vocab = SpmVocab(self.model_file)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def _encoded(self, text_file: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chunks = _chunks(text_file, self.chunk_lines)
        if self._pool is not None:
            return _ordered_parallel(self._pool, chunks, in_flight=2 * self.workers)
        if self._vocab is None:
            raise RuntimeError("use Binarizer as a context manager")
        return (self._vocab.encode_flat(chunk, np.int32) for chunk in chunks)

    def binarize(
        self, text_file: Path, out_prefix: Path, total_lines: Optional[int] = None, desc: str = ""
    ) -> BinarizeStats:
        """Write OUT_PREFIX.bin/.idx holding every line of text_file (one item per line, no bos/eos)."""
        stats = BinarizeStats(0, 0, 0)
        with (
            IndexedDatasetBuilder(out_prefix, self.dtype) as builder,
            tqdm(
                total=total_lines, unit="lines", desc=desc or Path(out_prefix).name, disable=None, mininterval=1.0
            ) as bar,
        ):
            for flat, sizes in self._encoded(text_file):
                builder.add_items(flat, sizes)
                stats.sentences += len(sizes)
                stats.tokens += flat.size
                stats.unk += int(np.count_nonzero(flat == UNK))
                bar.update(len(sizes))
            builder.finalize()
        return stats
