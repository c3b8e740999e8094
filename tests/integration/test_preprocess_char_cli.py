"""tk-preprocess config=text8 end to end, on the shipped 5M-character sample, and its exit code 2 path."""

from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "text8" / "text8-prefix-5M.xz"
# Documented in data/README.md.
SAMPLE_XZ_SHA256 = "128a32cee92e3ef5223966672d74f7f6e5a34c9d2084c573b0049a885d0dda57"
SAMPLE_TEXT_SHA256 = "e5e99b59bdafc581a6f648f6084e77141af20c413e1cdc750379e4967d4c3b79"


def preprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli.preprocess", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shipped_sample_end_to_end(tmp_path: Path) -> None:
    dest = tmp_path / "text8"
    done = preprocess("config=text8", f"input={SAMPLE}", f"destdir={dest}", f"sha256={SAMPLE_XZ_SHA256}")
    assert done.returncode == 0, done.stderr
    assert "not the full text8 corpus's 100,000,000" in done.stderr
    assert "train 4,500,000 / valid 250,000 / test 250,000" in done.stderr
    meta = json.loads((dest / "meta.json").read_text())
    assert {s: meta["splits"][s]["tokens"] for s in meta["splits"]} == {
        "train": 4_500_000,
        "valid": 250_000,
        "test": 250_000,
    }
    assert meta["source"] == {"path": str(SAMPLE), "sha256": SAMPLE_XZ_SHA256, "bytes": SAMPLE.stat().st_size}
    assert meta["full_corpus"] is False and meta["vocab_size"] == 27
    text = lzma.decompress(SAMPLE.read_bytes())
    assert hashlib.sha256(text).hexdigest() == SAMPLE_TEXT_SHA256
    # Independent decode of the written bytes: id 0 -> ' ', id k -> chr(ord('a') + k - 1).
    written = b"".join((dest / f"{s}.bin").read_bytes() for s in ("train", "valid", "test"))
    ids = np.frombuffer(written, dtype=np.uint8)
    assert np.where(ids == 0, ord(" "), ids + ord("a") - 1).astype(np.uint8).tobytes() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text8"]


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    source = tmp_path / "text8.txt"
    source.write_bytes(b"the quick brown fox\njumps over the lazy dog")
    done = preprocess("config=text8", f"input={source}", f"destdir={tmp_path / 'out'}")
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {source}: not text8: byte 0x0a ('\\n') at offset 19 is not one of the 27 symbols (a-z and space)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text8.txt"]
    missing = preprocess("config=text8", f"input={tmp_path / 'nope.zip'}", f"destdir={tmp_path / 'out'}")
    assert missing.returncode == 2
    assert missing.stderr == f"error: input file {tmp_path / 'nope.zip'} does not exist\n"
