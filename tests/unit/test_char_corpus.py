"""Character corpora: every container, validation errors, the 90/5/5 split, the dataset folder, loaders."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.char_corpus import (
    decode,
    load_char_split,
    load_vocab,
    preprocess_char_corpus,
    split_sizes,
)
from toolkit.errors import DataError

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "text8" / "text8-prefix-5M.xz"
SLICE_CHARS = 20_000


@pytest.fixture(scope="module")
def text() -> bytes:
    """The first 20,000 characters of the shipped sample (small, so every test stays fast)."""
    with lzma.open(SAMPLE) as handle:
        return handle.read(SLICE_CHARS)


def text8_ids(data: bytes) -> np.ndarray:
    """Independent id mapping: space -> 0, 'a'..'z' -> 1..26."""
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    return np.where(raw == ord(" "), 0, raw - ord("a") + 1).astype(np.uint8)


def leftovers(folder: Path, inputs: set[str]) -> list[str]:
    """Everything in folder except the test's own input files (an output or temporary folder)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in inputs)


def test_split_sizes_full_corpus_and_proportions() -> None:
    assert split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)
    assert split_sizes(5_000_000) == (4_500_000, 250_000, 250_000)
    assert split_sizes(12_549_840) == (11_294_856, 627_492, 627_492)
    assert split_sizes(1_001) == (901, 50, 50)
    for n in (20, 99, 12_345, 99_999_999):
        train, valid, test = split_sizes(n)
        assert train + valid + test == n and valid == test == n * 5 // 100


def test_text8_plain_file_round_trip(text: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "text8.txt"
    source.write_bytes(text)
    dest = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="toolkit.data.char_corpus"):
        meta = preprocess_char_corpus("text8", source, dest)
    assert caplog.messages == [
        f"{source} has 20,000 characters, not the full text8 corpus's 100,000,000: "
        "using 90%/5%/5% proportions, train 18,000 / valid 1,000 / test 1,000"
    ]
    files = ["meta.json", "test.bin", "train.bin", "valid.bin", "vocab.json"]
    assert sorted(p.name for p in dest.iterdir()) == files
    vocab = load_vocab(dest)
    assert vocab == [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    expected = text8_ids(text)
    parts = {name: load_char_split(dest, name) for name in ("train", "valid", "test")}
    assert [len(p) for p in parts.values()] == [18_000, 1_000, 1_000]
    np.testing.assert_array_equal(np.concatenate(list(parts.values())), expected)
    assert "".join(decode(p, vocab) for p in parts.values()) == text.decode()
    assert decode(parts["valid"], vocab) == text[18_000:19_000].decode()
    assert meta == json.loads((dest / "meta.json").read_text())
    assert meta == {
        "corpus": "text8",
        "vocab_size": 27,
        "splits": {
            name: {"tokens": len(p), "sha256": hashlib.sha256(np.asarray(p).tobytes()).hexdigest()}
            for name, p in parts.items()
        },
        "source": {
            "path": str(source.resolve()),
            "sha256": hashlib.sha256(text).hexdigest(),
            "bytes": len(text),
        },
        "format": "uint8",
        "full_corpus": False,
    }


def write_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("kind", ["zip-member", "zip-single", "xz", "gz"])
def test_text8_containers_give_identical_splits(kind: str, text: bytes, tmp_path: Path) -> None:
    if kind == "zip-member":
        source = write_zip(tmp_path / "in.zip", {"README": b"x", "text8": text})
    elif kind == "zip-single":
        source = write_zip(tmp_path / "in.zip", {"other-name": text})
    elif kind == "xz":
        source = tmp_path / "in.xz"
        source.write_bytes(lzma.compress(text))
    else:
        source = tmp_path / "in.bin"  # no telling extension: the gzip magic bytes decide
        source.write_bytes(gzip.compress(text))
    preprocess_char_corpus("text8", source, tmp_path / "out")
    got = np.concatenate([load_char_split(tmp_path / "out", s) for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(got, text8_ids(text))


def test_enwik8_ids_are_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10 + "<page>é€</page>\n".encode("utf-8") * 100
    source = write_zip(tmp_path / "enwik8.zip", {"enwik8": data, "notes.txt": b"ignored"})
    meta = preprocess_char_corpus("enwik8", source, tmp_path / "out")
    assert meta["vocab_size"] == 256 and meta["corpus"] == "enwik8"
    assert [meta["splits"][s]["tokens"] for s in ("train", "valid", "test")] == list(split_sizes(len(data)))
    vocab = load_vocab(tmp_path / "out")
    assert vocab == [chr(i) for i in range(256)]
    ids = np.concatenate([load_char_split(tmp_path / "out", s) for s in ("train", "valid", "test")])
    np.testing.assert_array_equal(ids, np.frombuffer(data, dtype=np.uint8))
    assert decode(ids, vocab).encode("latin-1") == data


def test_decode_multi_character_symbols() -> None:
    assert decode(np.array([2, 0, 1, 2]), ["<s>", "ab", "c"]) == "c<s>abc"


def corrupt_zip(path: Path, text: bytes) -> Path:
    """A stored zip whose member data has one byte flipped: only the CRC check can catch it."""
    write_zip(path, {"text8": text}, method=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    raw[30 + len("text8") + 100] ^= 0x01  # 30-byte local header, the name, then the data
    path.write_bytes(bytes(raw))
    return path


BAD_INPUTS = {
    "corrupt_zip": ("text8.zip", "corrupt or truncated zip file (Bad CRC-32 for file 'text8')"),
    "truncated_zip": ("text8.zip", "corrupt or truncated zip file (File is not a zip file)"),
    "truncated_xz": (
        "text8.xz",
        "corrupt or truncated xz file (Compressed file ended before the end-of-stream marker was reached)",
    ),
    "empty": ("text8", "empty input (no characters)"),
    "empty_xz": ("text8.xz", "empty input (no characters)"),
    "bad_char": (
        "text8",
        "not text8: byte 0x41 ('A') at offset 12345 is not one of the 27 symbols (a-z and space)",
    ),
    "newline": (
        "text8",
        "not text8: byte 0x0a ('\\n') at offset 19999 is not one of the 27 symbols (a-z and space)",
    ),
    "zip_members": ("text8.zip", "zip has no member 'text8' and 2 members: a, b"),
}


def make_bad_input(case: str, path: Path, text: bytes) -> None:
    if case == "corrupt_zip":
        corrupt_zip(path, text)
    elif case == "truncated_zip":
        write_zip(path, {"text8": text})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "truncated_xz":
        path.write_bytes(lzma.compress(text)[:-40])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "empty_xz":
        path.write_bytes(lzma.compress(b""))
    elif case == "bad_char":
        path.write_bytes(text[:12345] + b"A" + text[12346:])
    elif case == "newline":
        path.write_bytes(text[:19999] + b"\n")  # a trailing newline is the usual way a plain file goes wrong
    else:
        write_zip(path, {"a": text, "b": text})


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_and_leave_nothing(case: str, text: bytes, tmp_path: Path) -> None:
    name, message = BAD_INPUTS[case]
    source = tmp_path / name
    make_bad_input(case, source, text)
    with pytest.raises(DataError) as error:
        preprocess_char_corpus("text8", source, tmp_path / "out")
    assert str(error.value) == f"{source}: {message}"
    assert leftovers(tmp_path, {name}) == []  # no output folder and no temporary folder


def test_too_short_input(tmp_path: Path) -> None:
    source = tmp_path / "tiny"
    source.write_bytes(b"abc def")
    with pytest.raises(DataError) as error:
        preprocess_char_corpus("text8", source, tmp_path / "out")
    assert str(error.value) == (f"{source}: only 7 characters; at least 20 are needed for non-empty 90/5/5 splits")


def test_existing_destdir_needs_overwrite(text: bytes, tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(text[:1000])
    dest = tmp_path / "out"
    preprocess_char_corpus("text8", source, dest)
    source.write_bytes(text[:2000])
    with pytest.raises(DataError) as error:
        preprocess_char_corpus("text8", source, dest)
    assert str(error.value) == f"{dest} already exists and is not empty (pass overwrite=true to replace it)"
    assert len(load_char_split(dest, "train")) == 900  # the old folder is untouched
    preprocess_char_corpus("text8", source, dest, overwrite=True)
    assert len(load_char_split(dest, "train")) == 1800
    assert leftovers(tmp_path, {"a", "out"}) == []


def test_loader_checks_sizes_against_meta(text: bytes, tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(text[:1000])
    dest = tmp_path / "out"
    preprocess_char_corpus("text8", source, dest)
    (dest / "valid.bin").write_bytes(b"\x00" * 49)
    with pytest.raises(DataError) as error:
        load_char_split(dest, "valid")
    assert str(error.value) == f"{dest / 'valid.bin'}: 49 bytes but meta.json says 50 tokens (truncated?)"
    (dest / "test.bin").unlink()
    with pytest.raises(DataError) as error:
        load_char_split(dest, "test")
    assert str(error.value) == f"{dest / 'test.bin'} is missing"
    with pytest.raises(DataError) as error:
        load_char_split(dest, "dev")
    assert str(error.value) == f"{dest / 'meta.json'}: no split 'dev'; has: train, valid, test"
    (dest / "meta.json").unlink()
    with pytest.raises(DataError) as error:
        load_char_split(dest, "train")
    assert str(error.value) == f"{dest / 'meta.json'} is missing (run tk-preprocess first)"
    (dest / "vocab.json").write_text("{not json")
    with pytest.raises(DataError) as error:
        load_vocab(dest)
    assert str(error.value).startswith(f"{dest / 'vocab.json'}: cannot read JSON (")
