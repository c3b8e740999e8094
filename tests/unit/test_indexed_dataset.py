"""Binary datasets: round trip, dtype choice, and a clear DataError for every damaged or mismatched file."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.indexed_dataset import (
    HEADER,
    MAGIC,
    IndexedDataset,
    IndexedDatasetBuilder,
    best_dtype,
    write_dataset,
)
from toolkit.errors import DataError

ITEMS = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.array([65000]), np.array([4, 4, 4, 4, 9])]


def build(prefix: Path, items=ITEMS, dtype="uint16") -> None:
    write_dataset(prefix, items, dtype)


def test_round_trip_uint16_and_int32(tmp_path: Path) -> None:
    for dtype, items in (("uint16", ITEMS), ("int32", ITEMS + [np.array([70000, 3])])):
        prefix = tmp_path / dtype
        build(prefix, items, dtype)
        ds = IndexedDataset(prefix)
        assert len(ds) == len(items)
        assert ds.dtype == np.dtype(dtype)
        assert ds.sizes.tolist() == [len(item) for item in items]
        assert ds.num_tokens == sum(len(item) for item in items)
        for i, item in enumerate(items):
            assert ds[i].tolist() == item.tolist()
        assert ds[-1].tolist() == items[-1].tolist()
        assert (tmp_path / f"{dtype}.bin").stat().st_size == ds.num_tokens * np.dtype(dtype).itemsize
        with pytest.raises(IndexError):
            ds[len(items)]


def test_pickles_as_its_path(tmp_path: Path) -> None:
    build(tmp_path / "d")
    blob = pickle.dumps(IndexedDataset(tmp_path / "d"))
    assert len(blob) < 200  # the path, not the tokens
    assert pickle.loads(blob)[3].tolist() == ITEMS[3].tolist()


def test_bulk_add_equals_item_by_item(tmp_path: Path) -> None:
    build(tmp_path / "one")
    with IndexedDatasetBuilder(tmp_path / "bulk", np.uint16) as builder:
        builder.add_items(np.concatenate(ITEMS[:2]), np.array([3, 0]))
        builder.add_items(np.concatenate(ITEMS[2:]), np.array([1, 5]))
        builder.finalize()
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"bulk{suffix}").read_bytes() == (tmp_path / f"one{suffix}").read_bytes()


def test_index_layout_is_as_documented(tmp_path: Path) -> None:
    build(tmp_path / "d")
    raw = (tmp_path / "d.idx").read_bytes()
    assert struct.unpack("<8sIIQ", raw[:24]) == (MAGIC, 1, 2, 4)
    assert np.frombuffer(raw[24:40], "<i4").tolist() == [3, 0, 1, 5]
    assert np.frombuffer(raw[40:], "<i8").tolist() == [0, 3, 3, 4, 9]


def test_empty_dataset(tmp_path: Path) -> None:
    build(tmp_path / "empty", [])
    ds = IndexedDataset(tmp_path / "empty")
    assert len(ds) == 0 and ds.num_tokens == 0


def test_best_dtype() -> None:
    assert best_dtype(65534) == np.uint16
    assert best_dtype(65535) == np.int32


def test_ids_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    with IndexedDatasetBuilder(tmp_path / "x", np.uint16) as builder:
        with pytest.raises(ValueError, match=r"token ids outside \[0, 65535\] cannot be stored as uint16"):
            builder.add_item(np.array([65536]))


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(tmp_path / "x", np.uint16) as builder:
            builder.add_item(np.array([1, 2]))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_truncated_bin_names_the_file(tmp_path: Path) -> None:
    build(tmp_path / "d")
    bin_file = tmp_path / "d.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:-2])
    with pytest.raises(DataError) as error:
        IndexedDataset(tmp_path / "d")
    assert str(error.value) == (
        f"{bin_file}: 16 bytes but its index d.idx needs 18 (9 tokens of uint16); "
        "the file is truncated or does not belong to this index"
    )


def test_bin_of_another_dataset(tmp_path: Path) -> None:
    build(tmp_path / "a")
    build(tmp_path / "b", ITEMS[:1])
    (tmp_path / "a.bin").write_bytes((tmp_path / "b.bin").read_bytes())
    with pytest.raises(DataError, match=r"a\.bin: 6 bytes but its index a\.idx needs 18"):
        IndexedDataset(tmp_path / "a")


def test_bad_magic(tmp_path: Path) -> None:
    build(tmp_path / "d")
    idx = tmp_path / "d.idx"
    idx.write_bytes(b"NOTANIDX" + idx.read_bytes()[8:])
    with pytest.raises(DataError) as error:
        IndexedDataset(tmp_path / "d")
    assert str(error.value) == f"{idx}: not a toolkit index file (bad magic bytes b'NOTANIDX')"


def test_bad_version_dtype_and_length(tmp_path: Path) -> None:
    build(tmp_path / "d")
    idx = tmp_path / "d.idx"
    good = idx.read_bytes()
    cases = [
        (HEADER.pack(MAGIC, 2, 2, 4) + good[24:], f"{idx}: index format version 2 is not supported (expected 1)"),
        (HEADER.pack(MAGIC, 1, 9, 4) + good[24:], f"{idx}: unknown dtype code 9 (valid: [1, 2, 3, 4])"),
        (good[:-8], f"{idx}: index file has {len(good) - 8} bytes, expected {len(good)} for 4 items"),
        (good[:10], f"{idx}: index file is truncated (10 bytes, header needs 24)"),
        (
            good[:24] + np.array([3, 0, 2, 5], "<i4").tobytes() + good[40:],
            f"{idx}: offsets do not match sizes; the index is corrupt",
        ),
    ]
    for data, message in cases:
        idx.write_bytes(data)
        with pytest.raises(DataError) as error:
            IndexedDataset(tmp_path / "d")
        assert str(error.value) == message


def test_missing_file(tmp_path: Path) -> None:
    build(tmp_path / "d")
    (tmp_path / "d.bin").unlink()
    with pytest.raises(DataError) as error:
        IndexedDataset(tmp_path / "d")
    assert str(error.value) == f"{tmp_path / 'd.bin'}: binary dataset file is missing"
