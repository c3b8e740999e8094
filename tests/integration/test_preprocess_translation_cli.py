"""tk-preprocess for translation through the real command line: the shipped sample, and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from toolkit.data.recipes.translation import IWSLT_SAMPLE

REPO = Path(__file__).resolve().parents[2]


def preprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli.preprocess", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_iwslt14_sample_end_to_end(tmp_path: Path) -> None:
    dest = tmp_path / "iwslt14_sample"
    result = preprocess("config=iwslt14_sample", f"destdir={dest}")
    assert result.returncode == 0, result.stderr
    meta = json.loads((dest / "meta.json").read_text())
    pairs = {name: split["pairs"] for name, split in meta["splits"].items()}
    assert pairs == {"train": 4698, "valid": 1165, "test": 887}
    expected = {"meta.json", "spm.model", "spm.vocab"}
    expected |= {
        f"{split}.de-en.{lang}.{ext}"
        for split in ("train", "valid", "test")
        for lang in ("de", "en")
        for ext in ("bin", "idx")
    }
    expected |= {f"{split}.{lang}.txt" for split in ("valid", "test") for lang in ("de", "en")}
    assert {p.name for p in dest.iterdir()} == expected


def test_missing_input_exit_2_one_line_no_output(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    missing = tmp_path / "de-en.tgz"
    result = preprocess("config=iwslt14_de_en", f"input={missing}", f"destdir={dest}")
    assert result.returncode == 2
    assert result.stderr == f"error: input file {missing} does not exist\n"
    assert list(tmp_path.iterdir()) == []


def test_malformed_release_exit_2_no_output(tmp_path: Path) -> None:
    with tarfile.open(IWSLT_SAMPLE) as archive:
        archive.extractall(tmp_path / "release", filter="data")
    folder = tmp_path / "release" / "iwslt14-de-en-devtest"
    path = folder / "IWSLT14.TED.tst2012.de-en.de.xml"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[40] = lines[40].replace("</seg>", "")
    path.write_text("\n".join(lines), encoding="utf-8")
    (folder / "IWSLT14.TED.dev2010.de-en.en.xml").unlink()
    dest = tmp_path / "out"

    result = preprocess("config=iwslt14_sample", f"input={folder}", f"destdir={dest}")
    assert result.returncode == 2
    assert result.stderr == f"error: IWSLT14 release {folder} lacks IWSLT14.TED.dev2010.de-en.en.xml\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]

    shutil.copy(folder / "IWSLT14.TED.dev2010.de-en.de.xml", folder / "IWSLT14.TED.dev2010.de-en.en.xml")
    result = preprocess("config=iwslt14_sample", f"input={folder}", f"destdir={dest}")
    assert result.returncode == 2
    assert result.stderr == (f"error: {path}:41: malformed <seg> line (expected <seg id=...>text</seg> on one line)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
