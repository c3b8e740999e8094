"""tk-preprocess WikiText recipes end to end, through a subprocess: exit codes, outputs, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from toolkit.data.word_corpus import load_meta, load_word_split


def preprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli.preprocess", *args], capture_output=True, text=True, timeout=120
    )


def test_sample_recipe_builds_the_dataset(tmp_path):
    dest = tmp_path / "wt2"
    result = preprocess("config=wikitext2_sample", f"destdir={dest}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["dict.txt", "meta.json", "test.bin", "train.bin", "valid.bin"]
    meta = load_meta(dest)
    assert [meta["splits"][s]["tokens"] for s in ("train", "valid", "test")] == [217646, 120297, 125272]
    assert meta["vocab_size"] == 13779 and len(load_word_split(dest, "train")) == 217646
    again = preprocess("config=wikitext2_sample", f"destdir={dest}")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {dest} already exists and is not empty (pass overwrite=true to replace it)"
    )
    assert preprocess("config=wikitext2_sample", f"destdir={dest}", "overwrite=true").returncode == 0


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    missing = tmp_path / "nope.zip"
    result = preprocess("config=wikitext2", f"input={missing}", f"destdir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: input file {missing} does not exist"
    result = preprocess("config=wikitext103", f"destdir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: missing required value for key 'input'"
    not_zip = tmp_path / "corpus.txt"
    not_zip.write_text(" a b\n")
    result = preprocess("config=wikitext2", f"input={not_zip}", f"destdir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {not_zip} is neither a folder nor a zip archive"
    assert not Path(tmp_path / "out").exists()
