"""Word-level corpora (WikiText style): vocabulary with counts, binarized uint32 splits, and their loaders.

Conventions (fairseq's, with the WikiText spelling of the line end):
- Tokens are the whitespace-separated words of each line, plus one `<eos>` at every line end (an empty line
  gives a lone `<eos>`; a last line without a newline still gets one).
- Ids: `<s>`=0, `<pad>`=1, `<eos>`=2, `<unk>`=3 (fairseq's special ids; fairseq spells id 2 `</s>`), then
  the words of TRAIN sorted by count, most frequent first, ties in alphabetical (code point) order, so ids
  are independent of the order of the text. A literal `<unk>`/`<eos>` in the text is that special; a literal
  `<s>`/`<pad>` becomes `<unk>` (they must not appear as data).
- Words of valid/test missing from the train vocabulary become `<unk>` (counted as `oov` in meta.json).

Dataset folder: {train,valid,test}.bin (flat little-endian uint32 ids), dict.txt (one `word count` line per
id, specials included, so line i is id i; fairseq's dict.txt omits the specials), meta.json (tokens, lines,
unk and oov per split, vocab size, sha256 of every source and output). It is written atomically.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import lzma
import zipfile
from dataclasses import dataclass
from itertools import islice, repeat
from pathlib import Path
from typing import IO, Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from toolkit.data.atomic import atomic_output_dir, atomic_write_bytes
from toolkit.data.utf8 import first_invalid_line
from toolkit.errors import DataError

logger = logging.getLogger(__name__)

SPECIALS = ("<s>", "<pad>", "<eos>", "<unk>")
BOS, PAD, EOS, UNK = 0, 1, 2, 3
SPLITS = ("train", "valid", "test")
DTYPE = np.dtype("<u4")
FORMAT = "toolkit.word_corpus/1"
CHUNK_LINES = 20000  # lines decoded and split per step: bounded memory, few Python iterations
VOCAB_ORDER = "specials <s> <pad> <eos> <unk>, then train words by count descending, ties by code point"


@dataclass(frozen=True)
class SourceFile:
    """One raw text file of a corpus: a label for messages and a function opening it as a binary stream."""

    label: str
    opener: Callable[[], ContextManager[IO[bytes]]]


class Dictionary:
    """The id <-> word mapping of a word corpus, with the train counts."""

    def __init__(self, symbols: Sequence[str], counts: Sequence[int]):
        self.symbols = list(symbols)
        self.counts = list(counts)
        self.index = {word: i for i, word in enumerate(self.symbols)}
        self.index["<s>"] = self.index["<pad>"] = UNK  # as data, these are unknown words
        self._table = np.asarray(self.symbols, dtype=object)

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, words: Sequence[str]) -> np.ndarray:
        """Words -> uint32 ids; unknown words -> UNK."""
        return np.fromiter(map(self.index.get, words, repeat(UNK)), dtype=DTYPE, count=len(words))

    def decode(self, ids: np.ndarray) -> List[str]:
        """Ids -> words (one vectorised lookup)."""
        return self._table[np.asarray(ids, dtype=np.int64)].tolist()

    @classmethod
    def from_counts(cls, counts: collections.Counter) -> "Dictionary":
        """Specials first, then the words by count descending, equal counts in code-point order."""
        counts = collections.Counter(counts)
        unknown = counts.pop("<unk>", 0) + counts.pop("<s>", 0) + counts.pop("<pad>", 0)
        special_counts = [0, 0, counts.pop("<eos>", 0), unknown]
        words = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(list(SPECIALS) + [w for w, _ in words], special_counts + [c for _, c in words])

    def to_text(self) -> str:
        return "".join(f"{word} {count}\n" for word, count in zip(self.symbols, self.counts))


def iter_word_chunks(source: SourceFile) -> Iterator[List[str]]:
    """Yield the tokens of a source, CHUNK_LINES lines at a time, `<eos>` appended at every line end."""
    lines_done = 0
    try:
        with source.opener() as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8")  # universal newlines, like `for line in open(...)`
            while True:
                lines = list(islice(text, CHUNK_LINES))
                if not lines:
                    return
                chunk = "".join(lines)
                if not chunk.endswith("\n"):  # the last line of a file without a final newline
                    chunk += "\n"
                lines_done += len(lines)
                yield chunk.replace("\n", " <eos> ").split()
    except UnicodeDecodeError as error:
        with source.opener() as raw:  # the text reader decodes ahead: find the real line of the bad byte
            found = first_invalid_line(raw)
        line, reason = found if found is not None else (lines_done + 1, error.reason)
        raise DataError(f"{source.label}:{line}: not valid UTF-8 ({reason})") from None
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as error:
        raise DataError(f"{source.label}: cannot read: {error}") from None


def sha256_source(source: SourceFile) -> str:
    digest = hashlib.sha256()
    try:
        with source.opener() as raw:
            for block in iter(lambda: raw.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as error:
        raise DataError(f"{source.label}: cannot read: {error}") from None
    return digest.hexdigest()


def count_words(source: SourceFile) -> collections.Counter:
    """Token counts of a source (C-speed Counter updates, one per chunk)."""
    counts: collections.Counter = collections.Counter()
    for words in tqdm(iter_word_chunks(source), desc=f"counting {Path(source.label).name}", unit="chunk", disable=None):
        counts.update(words)
    return counts


def binarize(source: SourceFile, dictionary: Dictionary, out_path: Path) -> Dict[str, Any]:
    """Write the ids of a source to out_path; return its statistics (tokens, lines, unk, oov, sha256)."""
    digest = hashlib.sha256()
    tokens = lines = unk = literal_unk = 0
    with open(out_path, "wb") as out:
        for words in tqdm(iter_word_chunks(source), desc=f"binarizing {out_path.name}", unit="chunk", disable=None):
            ids = dictionary.encode(words)
            data = ids.tobytes()
            out.write(data)
            digest.update(data)
            tokens += len(ids)
            lines += int(np.count_nonzero(ids == EOS))
            unk += int(np.count_nonzero(ids == UNK))
            literal_unk += words.count("<unk>")
    return {
        "file": out_path.name,
        "tokens": tokens,
        "lines": lines,
        "unk": unk,
        "oov": unk - literal_unk,
        "sha256": digest.hexdigest(),
    }


def write_word_dataset(
    sources: Dict[str, SourceFile], destdir: str | Path, overwrite: bool = False, extra_meta: Optional[dict] = None
) -> Dict[str, Any]:
    """Build the vocabulary from sources['train'] and binarize every split into destdir (atomically)."""
    missing = [split for split in SPLITS if split not in sources]
    if missing:
        raise DataError(f"no source for split '{missing[0]}'")
    with atomic_output_dir(destdir, overwrite=overwrite) as tmp:
        dictionary = Dictionary.from_counts(count_words(sources["train"]))
        splits = {split: binarize(sources[split], dictionary, tmp / f"{split}.bin") for split in SPLITS}
        dict_bytes = dictionary.to_text().encode("utf-8")
        atomic_write_bytes(tmp / "dict.txt", dict_bytes)
        meta: Dict[str, Any] = {
            "format": FORMAT,
            "dtype": "uint32 little-endian",
            "vocab_size": len(dictionary),
            "specials": {word: i for i, word in enumerate(SPECIALS)},
            "vocab_order": VOCAB_ORDER,
            "dictionary": {"file": "dict.txt", "sha256": hashlib.sha256(dict_bytes).hexdigest()},
            "splits": splits,
            "sources": {
                split: {"name": sources[split].label, "sha256": sha256_source(sources[split])} for split in SPLITS
            },
            **(extra_meta or {}),
        }
        atomic_write_bytes(tmp / "meta.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
        for split, stats in splits.items():
            logger.info(
                "%s: %d tokens, %d lines, %d <unk> (%d oov)",
                split,
                stats["tokens"],
                stats["lines"],
                stats["unk"],
                stats["oov"],
            )
    logger.info("wrote %s (vocabulary %d)", destdir, len(dictionary))
    return meta


def load_meta(directory: str | Path) -> Dict[str, Any]:
    path = Path(directory) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} not found (run tk-preprocess to build the dataset)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a word-corpus dataset (expected format {FORMAT})")
    return meta


def load_word_split(directory: str | Path, split: str) -> np.ndarray:
    """The ids of a split as a read-only uint32 memmap, after checking its size against meta.json."""
    meta = load_meta(directory)
    if split not in meta["splits"]:
        raise DataError(f"{Path(directory) / 'meta.json'} has no split '{split}' (has: {', '.join(meta['splits'])})")
    info = meta["splits"][split]
    path = Path(directory) / info["file"]
    if not path.is_file():
        raise DataError(f"{path} not found")
    expected, actual = info["tokens"] * DTYPE.itemsize, path.stat().st_size
    if actual != expected:
        raise DataError(
            f"{path}: {actual} bytes, expected {expected} ({info['tokens']} uint32 tokens per meta.json); "
            "the file is truncated or from another dataset"
        )
    if info["tokens"] == 0:
        return np.zeros(0, dtype=DTYPE)  # numpy cannot memory-map an empty file
    return np.memmap(path, dtype=DTYPE, mode="r", shape=(info["tokens"],))


def load_dictionary(directory: str | Path) -> Dictionary:
    """The Dictionary of a dataset folder (dict.txt, checked against meta.json's vocab_size)."""
    meta = load_meta(directory)
    path = Path(directory) / meta["dictionary"]["file"]
    if not path.is_file():
        raise DataError(f"{path} not found")
    symbols, counts = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        word, _, count = line.rpartition(" ")
        if not word or not count.isdigit():
            raise DataError(f"{path}:{number}: expected 'word count', got {line!r}")
        symbols.append(word)
        counts.append(int(count))
    if tuple(symbols[: len(SPECIALS)]) != SPECIALS or len(symbols) != meta["vocab_size"]:
        raise DataError(
            f"{path}: {len(symbols)} entries starting {symbols[: len(SPECIALS)]}, expected {meta['vocab_size']} "
            f"starting {list(SPECIALS)} (per meta.json)"
        )
    return Dictionary(symbols, counts)


def file_source(path: Path) -> SourceFile:
    """A plain (or .xz-compressed) file on disk."""
    if path.suffix == ".xz":
        return SourceFile(str(path), lambda: lzma.open(path, "rb"))
    return SourceFile(str(path), lambda: open(path, "rb"))


def bytes_source(label: str, data: bytes) -> SourceFile:
    """Text held in memory (a derived split of a shipped sample)."""
    return SourceFile(label, lambda: contextlib.nullcontext(io.BytesIO(data)))


def zip_member_source(archive: Path, member: str) -> SourceFile:
    @contextlib.contextmanager
    def opener() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as handle:
            yield handle

    return SourceFile(f"{archive}:{member}", opener)
