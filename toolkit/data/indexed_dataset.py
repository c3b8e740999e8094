"""Binary token datasets: a memory-mapped array of token ids (PREFIX.bin) plus an index (PREFIX.idx).

PREFIX.bin  all items' token ids back to back, in the index's dtype, no separators.
PREFIX.idx  little-endian:
              8 bytes   magic b"TKIDX\\x00\\x00\\x01"
              uint32    format version (1)
              uint32    dtype code (1 uint8, 2 uint16, 3 int32, 4 int64)
              uint64    item count N
              int32[N]  sizes (tokens per item)
              int64[N+1] offsets in tokens (0, cumsum(sizes)); offsets[N] = total tokens

On load every field is checked (magic, version, dtype code, index length, offsets against sizes) and the .bin
length must equal total tokens * itemsize, so a truncated or mismatched pair of files is a DataError naming the
file rather than garbage tokens later. Items come back as read-only numpy views into the memory map.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterable, Union

import numpy as np

from toolkit.errors import DataError

MAGIC = b"TKIDX\x00\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")
DTYPE_CODES = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 3: np.dtype(np.int32), 4: np.dtype(np.int64)}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}

PathPrefix = Union[str, "os.PathLike[str]"]


def bin_path(prefix: PathPrefix) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


def idx_path(prefix: PathPrefix) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits below 65535, else int32 (as fairseq's mmap datasets choose)."""
    return np.dtype(np.uint16) if vocab_size < 65535 else np.dtype(np.int32)


def _temp_beside(path: Path) -> Path:
    """An empty temporary file in path's folder (same file system, so os.replace is atomic).

    mkstemp makes it owner-only; it gets the permissions a plain open() would give (0666 minus umask).
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return Path(name)


class IndexedDatasetBuilder:
    """Append items (1-D integer arrays) and `finalize()` into PREFIX.bin / PREFIX.idx.

    Tokens stream to a temporary .bin as they arrive (nothing but the sizes stays in memory); `finalize`
    writes the index, fsyncs both and renames them into place, so the pair appears whole or not at all.
    Used as a context manager, an exception removes the temporary files.
    """

    def __init__(self, path_prefix: PathPrefix, dtype: Union[np.dtype, type, str]):
        self.prefix = Path(path_prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported dtype {self.dtype}; use one of {sorted(map(str, CODE_OF_DTYPE))}")
        self._limit = np.iinfo(self.dtype).max
        self._bin_tmp = _temp_beside(bin_path(self.prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._sizes: list[np.ndarray] = []
        self._done = False

    def add_item(self, tokens: np.ndarray) -> None:
        """Append one item."""
        tokens = np.asarray(tokens)
        self.add_items(tokens.reshape(-1), np.array([tokens.size], dtype=np.int64))

    def add_items(self, flat_tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append many items at once: their tokens concatenated, and each item's length."""
        flat_tokens = np.asarray(flat_tokens)
        sizes = np.asarray(sizes, dtype=np.int64)
        if int(sizes.sum()) != flat_tokens.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but {flat_tokens.size} tokens were given")
        if flat_tokens.size and (flat_tokens.min() < 0 or flat_tokens.max() > self._limit):
            raise ValueError(f"token ids outside [0, {self._limit}] cannot be stored as {self.dtype}")
        self._bin.write(flat_tokens.astype(self.dtype, copy=False).tobytes())
        self._sizes.append(sizes.astype(np.int32))

    def __len__(self) -> int:
        return sum(len(s) for s in self._sizes)

    def finalize(self) -> None:
        """Write the index and move both files into place (atomic per file, .bin first)."""
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int32)
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        idx_tmp = _temp_beside(idx_path(self.prefix))
        try:
            with open(idx_tmp, "wb") as handle:
                handle.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], len(sizes)))
                handle.write(sizes.astype("<i4").tobytes())
                handle.write(offsets.astype("<i8").tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(self._bin_tmp, bin_path(self.prefix))
            os.replace(idx_tmp, idx_path(self.prefix))
        except BaseException:
            idx_tmp.unlink(missing_ok=True)
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far."""
        with contextlib.suppress(Exception):
            self._bin.close()
        self._bin_tmp.unlink(missing_ok=True)

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()


class IndexedDataset:
    """Read-only view of PREFIX.bin / PREFIX.idx: `len(ds)`, `ds[i]` (numpy view), `ds.sizes`."""

    def __init__(self, path_prefix: PathPrefix):
        self.prefix = Path(path_prefix)
        index, bin_file = idx_path(self.prefix), bin_path(self.prefix)
        for path in (index, bin_file):
            if not path.is_file():
                raise DataError(f"{path}: binary dataset file is missing")
        self.dtype, self.sizes, self.offsets = _read_index(index)
        total = int(self.offsets[-1])
        expected = total * self.dtype.itemsize
        actual = bin_file.stat().st_size
        if actual != expected:
            raise DataError(
                f"{bin_file}: {actual} bytes but its index {index.name} needs {expected} "
                f"({total} tokens of {self.dtype}); the file is truncated or does not belong to this index"
            )
        # np.memmap refuses empty files; an empty dataset gets an empty array instead.
        self._data = np.memmap(bin_file, dtype=self.dtype, mode="r") if total else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.sizes)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items in {self.prefix}")
        i %= n
        return self._data[self.offsets[i] : self.offsets[i + 1]]

    @property
    def num_tokens(self) -> int:
        """Tokens over all items."""
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        # Pickled (e.g. into DataLoader workers) as its path: the memory map is reopened, never copied.
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])  # type: ignore[misc]

    @staticmethod
    def exists(path_prefix: PathPrefix) -> bool:
        return idx_path(path_prefix).is_file() and bin_path(path_prefix).is_file()


def _read_index(path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """Parse and check an index file; returns (dtype, sizes, offsets) as memory-mapped arrays."""
    length = path.stat().st_size
    if length < HEADER.size:
        raise DataError(f"{path}: index file is truncated ({length} bytes, header needs {HEADER.size})")
    with open(path, "rb") as handle:
        magic, version, code, count = HEADER.unpack(handle.read(HEADER.size))
    if magic != MAGIC:
        raise DataError(f"{path}: not a toolkit index file (bad magic bytes {magic!r})")
    if version != VERSION:
        raise DataError(f"{path}: index format version {version} is not supported (expected {VERSION})")
    if code not in DTYPE_CODES:
        raise DataError(f"{path}: unknown dtype code {code} (valid: {sorted(DTYPE_CODES)})")
    expected = HEADER.size + 4 * count + 8 * (count + 1)
    if length != expected:
        raise DataError(f"{path}: index file has {length} bytes, expected {expected} for {count} items")
    sizes = (
        np.memmap(path, dtype="<i4", mode="r", offset=HEADER.size, shape=(count,))
        if count
        else np.zeros(0, dtype=np.int32)
    )
    offsets = np.memmap(path, dtype="<i8", mode="r", offset=HEADER.size + 4 * count, shape=(count + 1,))
    if offsets[0] != 0 or (count and (np.any(sizes < 0) or not np.array_equal(np.diff(offsets), sizes))):
        raise DataError(f"{path}: offsets do not match sizes; the index is corrupt")
    return DTYPE_CODES[code], sizes, offsets


def write_dataset(path_prefix: PathPrefix, items: Iterable[np.ndarray], dtype: Union[np.dtype, type, str]) -> None:
    """Convenience: build PREFIX.bin/.idx from an iterable of 1-D arrays."""
    with IndexedDatasetBuilder(path_prefix, dtype) as builder:
        for item in items:
            builder.add_item(item)
        builder.finalize()
