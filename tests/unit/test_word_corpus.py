"""Word corpus preprocessing (WikiText): vocabulary, <eos> per line, round trips, inputs and errors."""

from __future__ import annotations

import collections
import hashlib
import lzma
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.recipes.wikitext import (
    SAMPLE_DIR,
    WikiText2Config,
    WikiText2SampleConfig,
    wikitext2,
    wikitext2_sample,
)
from toolkit.data.word_corpus import EOS, UNK, load_dictionary, load_meta, load_word_split
from toolkit.errors import ConfigError, DataError


def reference_tokens(text: str) -> list[str]:
    """The standard WikiText tokenisation, written independently: words of each line, then <eos>."""
    tokens = []
    for line in text.splitlines():
        tokens.extend(line.split() + ["<eos>"])
    return tokens


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wt2") / "sample"
    wikitext2_sample(WikiText2SampleConfig(destdir=str(dest)))
    return dest


def shipped(name: str) -> str:
    return lzma.decompress((SAMPLE_DIR / f"{name}.xz").read_bytes()).decode("utf-8")


def test_sample_vocabulary_counts_and_eos_per_line(sample):
    train_text = shipped("wiki.valid.tokens")
    tokens = reference_tokens(train_text)
    assert len(tokens) == 217646
    meta = load_meta(sample)
    assert meta["splits"]["train"]["tokens"] == 217646 and meta["splits"]["train"]["lines"] == 3760
    counts = collections.Counter(tokens)
    dictionary = load_dictionary(sample)
    assert dictionary.symbols[:4] == ["<s>", "<pad>", "<eos>", "<unk>"]
    assert dictionary.counts[:4] == [0, 0, 3760, 11718]
    words = sorted((w for w in counts if w not in ("<eos>", "<unk>")), key=lambda w: (-counts[w], w))
    assert dictionary.symbols[4:] == words
    assert dictionary.counts[4:] == [counts[w] for w in words]
    assert len(dictionary) == meta["vocab_size"] == 13779
    ids = load_word_split(sample, "train")
    assert ids.dtype == np.uint32 and np.count_nonzero(ids == EOS) == 3760


def test_sample_round_trip_and_split_scheme(sample):
    dictionary = load_dictionary(sample)
    assert dictionary.decode(load_word_split(sample, "train")) == reference_tokens(shipped("wiki.valid.tokens"))
    test_lines = shipped("wiki.test.tokens").splitlines()
    assert len(test_lines) == 4358
    vocab = set(dictionary.symbols)
    for split, lines in (("valid", test_lines[:2179]), ("test", test_lines[2179:])):
        expected = [w if w in vocab else "<unk>" for w in reference_tokens("\n".join(lines))]
        assert dictionary.decode(load_word_split(sample, split)) == expected
        info = load_meta(sample)["splits"][split]
        assert info["lines"] == 2179 and info["tokens"] == len(expected)
        assert info["oov"] == sum(w not in vocab for w in reference_tokens("\n".join(lines)))
    assert load_meta(sample)["splits"]["valid"]["tokens"] + load_meta(sample)["splits"]["test"]["tokens"] == 245569


def test_truncated_bin_is_a_data_error_naming_the_file(sample, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sample, copy)
    with open(copy / "valid.bin", "r+b") as handle:
        handle.truncate(481188 - 4)
    with pytest.raises(DataError) as error:
        load_word_split(copy, "valid")
    assert str(error.value) == (
        f"{copy / 'valid.bin'}: 481184 bytes, expected 481188 (120297 uint32 tokens per meta.json); "
        "the file is truncated or from another dataset"
    )
    (copy / "meta.json").unlink()
    with pytest.raises(DataError, match=r"meta.json not found \(run tk-preprocess to build the dataset\)$"):
        load_word_split(copy, "train")


def write_corpus(folder: Path, train: str, valid: str, test: str) -> Path:
    folder.mkdir(parents=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    return folder


TRAIN = " b a\n\n = c = \n a b <unk> a\n c b"  # empty line and a last line without newline
VALID = " a zz\n b <eos> c\n"  # zz is out of vocabulary; a literal <eos> is the line-end token


def test_folder_input_vocabulary_order_eos_and_oov(tmp_path):
    folder = write_corpus(tmp_path / "raw" / "wikitext-2", TRAIN, VALID, "\n")
    dest = tmp_path / "out"
    wikitext2(WikiText2Config(input=str(tmp_path / "raw"), destdir=str(dest)))
    dictionary = load_dictionary(dest)
    # counts: a 3, b 3, = 2, c 2, <eos> 5, <unk> 1; equal counts in code-point order (a < b, = < c)
    assert list(zip(dictionary.symbols, dictionary.counts)) == [
        ("<s>", 0),
        ("<pad>", 0),
        ("<eos>", 5),
        ("<unk>", 1),
        ("a", 3),
        ("b", 3),
        ("=", 2),
        ("c", 2),
    ]
    assert load_word_split(dest, "train").tolist() == [5, 4, EOS, EOS, 6, 7, 6, EOS, 4, 5, UNK, 4, EOS, 7, 5, EOS]
    assert load_word_split(dest, "valid").tolist() == [4, UNK, EOS, 5, EOS, 7, EOS]
    assert load_word_split(dest, "test").tolist() == [EOS]
    meta = load_meta(dest)
    assert meta["splits"]["valid"]["oov"] == 1 and meta["splits"]["train"]["oov"] == 0
    assert meta["sources"]["train"] == {
        "name": str(folder / "wiki.train.tokens"),
        "sha256": hashlib.sha256(TRAIN.encode()).hexdigest(),
    }


def test_zip_and_file_url_inputs_give_the_same_dataset(tmp_path):
    folder = write_corpus(tmp_path / "raw", TRAIN, VALID, " c\n")
    wikitext2(WikiText2Config(input=str(folder), destdir=str(tmp_path / "from_folder")))
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "valid", "test"):
            zf.write(folder / f"wiki.{split}.tokens", f"wikitext-2/wiki.{split}.tokens")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    wikitext2(WikiText2Config(input=str(archive), destdir=str(tmp_path / "from_zip"), sha256=digest))
    wikitext2(
        WikiText2Config(
            input=archive.as_uri(), destdir=str(tmp_path / "from_url"), cache_dir=str(tmp_path / "cache"), sha256=digest
        )
    )
    reference = load_meta(tmp_path / "from_folder")["splits"]
    for name in ("from_zip", "from_url"):
        meta = load_meta(tmp_path / name)
        assert meta["splits"] == reference and meta["archive_sha256"] == digest
    with pytest.raises(DataError, match="sha256 mismatch"):
        wikitext2(WikiText2Config(input=str(archive), destdir=str(tmp_path / "bad"), sha256="0" * 64))
    assert not (tmp_path / "bad").exists()


def test_missing_train_file_names_it_and_leaves_no_output(tmp_path):
    folder = write_corpus(tmp_path / "raw", TRAIN, VALID, "\n")
    (folder / "wiki.train.tokens").unlink()
    dest = tmp_path / "out" / "wt2"
    with pytest.raises(DataError) as error:
        wikitext2(WikiText2Config(input=str(folder), destdir=str(dest)))
    assert str(error.value) == (
        f"{folder / 'wiki.train.tokens'} not found (a WikiText folder needs "
        "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens)"
    )
    assert not dest.exists() and not (tmp_path / "out").exists()


def test_bad_utf8_midway_leaves_no_output(tmp_path):
    folder = write_corpus(tmp_path / "raw", TRAIN, VALID, "\n")
    (folder / "wiki.test.tokens").write_bytes(b" ok\n bad \xff byte\n")
    dest = tmp_path / "out"
    with pytest.raises(DataError, match=r"wiki\.test\.tokens:2: not valid UTF-8 \(byte 0xff: invalid start byte\)$"):
        wikitext2(WikiText2Config(input=str(folder), destdir=str(dest)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # neither destdir nor a temporary folder


def test_zip_without_tokens_and_folder_with_sha256_are_rejected(tmp_path):
    archive = tmp_path / "wikitext-2-raw-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wikitext-2-raw/wiki.train.raw", " a\n")
    with pytest.raises(DataError) as error:
        wikitext2(WikiText2Config(input=str(archive), destdir=str(tmp_path / "out")))
    assert str(error.value) == (
        f"{archive} has no wiki.train.tokens (expected e.g. wikitext-103/wiki.train.tokens)"
        " (a -raw- zip holds wiki.*.raw; use the tokenized one)"
    )
    with pytest.raises(ConfigError, match=r"^sha256 checks a zip or URL input, but input .* is a folder$"):
        wikitext2(WikiText2Config(input=str(tmp_path), destdir=str(tmp_path / "out"), sha256="0" * 64))


def test_bad_dictionary_line_is_a_data_error(sample, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sample, copy)
    lines = (copy / "dict.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[5] = "brokenline\n"
    (copy / "dict.txt").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_dictionary(copy)
    assert str(error.value) == f"{copy / 'dict.txt'}:6: expected 'word count', got 'brokenline'"
