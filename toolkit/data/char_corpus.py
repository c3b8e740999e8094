"""Character-level corpora (text8, enwik8): read, validate, split 90/5/5 and store as uint8 token ids.

Dataset folder layout (see data/README.md):
  train.bin valid.bin test.bin  raw uint8 token ids, one per character (np.memmap-able)
  vocab.json                    list of symbols in id order
  meta.json                     {"corpus", "vocab_size", "splits": {name: {"tokens", "sha256"}},
                                 "source": {"path", "sha256", "bytes"}, "format": "uint8", "full_corpus"}

Vocabularies: text8 has 27 symbols, id 0 = ' ' and ids 1..26 = 'a'..'z'. enwik8 is bytes: id = byte value,
256 symbols, symbol i = chr(i) (so decoded text is the Latin-1 reading of the bytes; `.encode("latin-1")`
gives the original bytes back).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from toolkit.data.atomic import atomic_output_dir
from toolkit.data.download import sha256_file
from toolkit.errors import DataError

logger = logging.getLogger(__name__)

FULL_CORPUS_CHARS = 100_000_000  # text8 and enwik8 are both exactly 10^8 characters (bytes)
FULL_SPLITS = (90_000_000, 5_000_000, 5_000_000)
SPLIT_NAMES = ("train", "valid", "test")
# What a damaged archive raises: bad CRC / no central directory, corrupt xz or gzip data, cut-off streams,
# a zip compression method Python lacks.
CONTAINER_ERRORS = (
    zipfile.BadZipFile,
    lzma.LZMAError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
)
INVALID = 255  # lookup-table marker for a byte outside the vocabulary (never a real id: vocabularies < 255)


@dataclass(frozen=True)
class CharCorpus:
    """What differs between the character corpora: the zip member name and the vocabulary."""

    name: str
    member: str  # member to read from a .zip holding several files
    vocab: tuple[str, ...]  # symbols in id order
    strict: bool  # True: bytes outside the vocabulary are an error (text8); False: ids = bytes (enwik8)

    def lookup_table(self) -> np.ndarray:
        """256-entry byte -> id table (INVALID for bytes not in the vocabulary)."""
        table = np.full(256, INVALID, dtype=np.uint8)
        codes = np.frombuffer("".join(self.vocab).encode("latin-1"), dtype=np.uint8)
        table[codes] = np.arange(len(self.vocab), dtype=np.uint8) if self.strict else codes
        return table


TEXT8 = CharCorpus("text8", "text8", tuple(" abcdefghijklmnopqrstuvwxyz"), strict=True)
ENWIK8 = CharCorpus("enwik8", "enwik8", tuple(chr(i) for i in range(256)), strict=False)
CORPORA = {corpus.name: corpus for corpus in (TEXT8, ENWIK8)}


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) sizes: 90M/5M/5M for the full 10^8 corpus, else 5% valid and test, rest train."""
    if n == FULL_CORPUS_CHARS:
        return FULL_SPLITS
    held_out = n * 5 // 100
    return n - 2 * held_out, held_out, held_out


def _read_zip(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if member not in names and len(names) != 1:
            listed = ", ".join(names)
            raise DataError(f"{path}: zip has no member '{member}' and {len(names)} members: {listed}")
        return archive.read(member if member in names else names[0])


def _sniff(path: Path) -> str:
    """Container format from the extension, else from the magic bytes (e.g. for a cached download)."""
    suffix = path.suffix.lower()
    if suffix in (".zip", ".xz", ".gz"):
        return suffix[1:]
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    return "plain"


def read_corpus_bytes(path: Path, member: str) -> bytes:
    """Bytes of a plain, .zip, .xz or .gz corpus file; a corrupt or truncated container is a DataError."""
    kind = _sniff(path)
    try:
        if kind == "zip":
            data = _read_zip(path, member)
        elif kind == "xz":
            with lzma.open(path) as handle:
                data = handle.read()
        elif kind == "gz":
            with gzip.open(path) as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except CONTAINER_ERRORS as error:
        raise DataError(f"{path}: corrupt or truncated {kind} file ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise DataError(f"{path}: empty input (no characters)")
    return data


def to_ids(data: bytes, corpus: CharCorpus, path: Path) -> np.ndarray:
    """Map bytes to uint8 ids with one table lookup; for a strict corpus, name the first bad byte."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ids = corpus.lookup_table()[raw]
    if corpus.strict:
        bad = ids == INVALID
        if bad.any():
            offset = int(np.argmax(bad))
            byte = int(raw[offset])
            raise DataError(
                f"{path}: not {corpus.name}: byte 0x{byte:02x} ({chr(byte)!r}) at offset {offset} "
                f"is not one of the {len(corpus.vocab)} symbols (a-z and space)"
            )
    return ids


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array))).hexdigest()


def preprocess_char_corpus(corpus_name: str, source: Path, destdir: Path, overwrite: bool = False) -> dict:
    """Read, validate and split `source`; write the dataset folder atomically. Returns meta.json's content."""
    corpus = CORPORA[corpus_name]
    source = Path(source)
    ids = to_ids(read_corpus_bytes(source, corpus.member), corpus, source)
    n = len(ids)
    sizes = split_sizes(n)
    if min(sizes) == 0:
        raise DataError(f"{source}: only {n} characters; at least 20 are needed for non-empty 90/5/5 splits")
    full = n == FULL_CORPUS_CHARS
    if not full:
        logger.warning(
            f"{source} has {n:,} characters, not the full {corpus.name} corpus's {FULL_CORPUS_CHARS:,}: "
            f"using 90%/5%/5% proportions, train {sizes[0]:,} / valid {sizes[1]:,} / test {sizes[2]:,}"
        )
    bounds = np.cumsum((0,) + sizes)
    splits = {name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(SPLIT_NAMES)}
    meta = {
        "corpus": corpus.name,
        "vocab_size": len(corpus.vocab),
        "splits": {name: {"tokens": int(arr.size), "sha256": _digest(arr)} for name, arr in splits.items()},
        "source": {
            "path": str(source.resolve()),
            "sha256": sha256_file(source),
            "bytes": source.stat().st_size,  # of the file as given (compressed if it is an archive)
        },
        "format": "uint8",
        "full_corpus": full,
    }
    with atomic_output_dir(destdir, overwrite=overwrite) as tmp:
        for name, part in splits.items():
            # not ndarray.tofile: on a full disk it raises an OSError without errno ("N requested and M written")
            (tmp / f"{name}.bin").write_bytes(part.tobytes())
        (tmp / "vocab.json").write_text(json.dumps(list(corpus.vocab)) + "\n", encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing (run tk-preprocess first)") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read JSON ({error})") from None


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a character dataset folder."""
    return _read_json(Path(data_dir) / "meta.json")


def load_vocab(data_dir: str | Path) -> list[str]:
    """Symbols in id order, from vocab.json."""
    path = Path(data_dir) / "vocab.json"
    vocab = _read_json(path)
    if not isinstance(vocab, list) or not all(isinstance(symbol, str) for symbol in vocab):
        raise DataError(f"{path}: expected a JSON list of strings")
    return vocab


def load_char_split(data_dir: str | Path, split: str) -> np.memmap:
    """Read-only uint8 memmap of one split; its size must match meta.json."""
    meta = load_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    splits = meta.get("splits", {})
    if split not in splits:
        raise DataError(f"{Path(data_dir) / 'meta.json'}: no split '{split}'; has: {', '.join(splits)}")
    expected = int(splits[split]["tokens"])
    if not path.is_file():
        raise DataError(f"{path} is missing")
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(f"{path}: {actual} bytes but meta.json says {expected} tokens (truncated?)")
    return np.memmap(path, dtype=np.uint8, mode="r")


def decode(ids: Sequence[int] | np.ndarray, vocab: Sequence[str]) -> str:
    """Token ids -> text. Single-character Latin-1 vocabularies (text8, enwik8) decode with one lookup."""
    ids = np.asarray(ids, dtype=np.int64)
    if all(len(symbol) == 1 and ord(symbol) < 256 for symbol in vocab):
        table = np.frombuffer("".join(vocab).encode("latin-1"), dtype=np.uint8)
        return table[ids].tobytes().decode("latin-1")
    return "".join(np.asarray(vocab, dtype=object)[ids])
