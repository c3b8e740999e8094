"""tk-preprocess recipes for WikiText: `wikitext103`, `wikitext2` and `wikitext2_sample` (shipped, offline).

`input` is a folder holding wiki.{train,valid,test}.tokens (directly or in a wikitext-103/ or wikitext-2/
subfolder), a zip such as wikitext-103-v1.zip / wikitext-2-v1.zip, or an http(s):// or file:// URL of one
(fetched into cache_dir, checked against sha256 when given). The output format is toolkit.data.word_corpus's.
"""

from __future__ import annotations

import hashlib
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import MISSING

from toolkit.data.download import resolve_input, sha256_file
from toolkit.data.word_corpus import (
    SPLITS,
    SourceFile,
    bytes_source,
    file_source,
    write_word_dataset,
    zip_member_source,
)
from toolkit.errors import ConfigError, DataError
from toolkit.registry import PREPROCESSORS

SAMPLE_DIR = Path(__file__).resolve().parents[3] / "data" / "wikitext2"
# sha256 of the decompressed shipped files (WikiText-2 v1 valid/test, see data/README.md)
SAMPLE_SHA256 = {
    "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
SAMPLE_SCHEME = (
    "WikiText-2 has no train file here: train = wiki.valid.tokens (the vocabulary comes from it); "
    "valid = the first half of the lines of wiki.test.tokens, test = the second half"
)


@dataclass
class WikiTextConfig:
    """Preprocess a WikiText corpus (tokenized version) into a word-level binary dataset."""

    input: str = MISSING
    """Folder with wiki.{train,valid,test}.tokens, a wikitext zip, or an http(s):// / file:// URL of the zip."""
    destdir: str = MISSING
    """Output folder (train/valid/test.bin, dict.txt, meta.json)."""
    sha256: Optional[str] = None
    """Expected sha256 of the zip (or URL download); not applicable to a folder."""
    cache_dir: str = "~/.cache/toolkit/downloads"
    """Where URL inputs are downloaded."""
    overwrite: bool = False
    """Replace an existing, non-empty destdir."""


@dataclass
class WikiText103Config(WikiTextConfig):
    """WikiText-103 (e.g. input=wikitext-103-v1.zip)."""

    destdir: str = "data-bin/wikitext-103"


@dataclass
class WikiText2Config(WikiTextConfig):
    """WikiText-2 (e.g. input=wikitext-2-v1.zip)."""

    destdir: str = "data-bin/wikitext-2"


@dataclass
class WikiText2SampleConfig:
    """The shipped WikiText-2 sample (valid/test only); needs no input."""

    destdir: str = "data-bin/wikitext2-sample"
    """Output folder."""
    sample_dir: str = str(SAMPLE_DIR)
    """Folder holding the shipped wiki.valid.tokens.xz and wiki.test.tokens.xz."""
    overwrite: bool = False
    """Replace an existing, non-empty destdir."""


def _folder_sources(folder: Path) -> Dict[str, SourceFile]:
    base = next(
        (
            d
            for d in (folder, folder / "wikitext-103", folder / "wikitext-2")
            if any((d / f"wiki.{s}.tokens").is_file() for s in SPLITS)
        ),
        folder,
    )
    for split in SPLITS:
        if not (base / f"wiki.{split}.tokens").is_file():
            raise DataError(
                f"{base / f'wiki.{split}.tokens'} not found (a WikiText folder needs "
                "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens)"
            )
    return {split: file_source(base / f"wiki.{split}.tokens") for split in SPLITS}


def _zip_sources(archive: Path) -> Dict[str, SourceFile]:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{archive}: not a readable zip archive ({error})") from None
    sources = {}
    for split in SPLITS:
        wanted = f"wiki.{split}.tokens"
        matches = sorted((n for n in names if n == wanted or n.endswith("/" + wanted)), key=len)
        if not matches:
            raw = any(n.endswith(".raw") for n in names)
            hint = " (a -raw- zip holds wiki.*.raw; use the tokenized one)" if raw else ""
            raise DataError(f"{archive} has no {wanted} (expected e.g. wikitext-103/{wanted}){hint}")
        sources[split] = zip_member_source(archive, matches[0])
    return sources


def wikitext_sources(spec: str, cache_dir: str, sha256: Optional[str]) -> Tuple[Dict[str, SourceFile], Dict[str, Any]]:
    """Sources of the three splits from a folder, zip or URL, and a description of the input for meta.json."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if sha256 is not None:
            raise ConfigError(f"sha256 checks a zip or URL input, but input {folder} is a folder")
        return _folder_sources(folder), {"input": str(folder)}
    archive = resolve_input(spec, Path(cache_dir).expanduser(), sha256)
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{archive} is neither a folder nor a zip archive")
    return _zip_sources(archive), {"input": spec, "archive": str(archive), "archive_sha256": sha256_file(archive)}


def _run(cfg: WikiTextConfig, recipe: str) -> None:
    sources, input_meta = wikitext_sources(cfg.input, cfg.cache_dir, cfg.sha256)
    write_word_dataset(sources, cfg.destdir, overwrite=cfg.overwrite, extra_meta={"recipe": recipe, **input_meta})


@PREPROCESSORS.register("wikitext103", WikiText103Config)
def wikitext103(cfg: WikiText103Config) -> None:
    """WikiText-103 word-level dataset."""
    _run(cfg, "wikitext103")


@PREPROCESSORS.register("wikitext2", WikiText2Config)
def wikitext2(cfg: WikiText2Config) -> None:
    """WikiText-2 word-level dataset."""
    _run(cfg, "wikitext2")


def _read_sample(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path} not found (the shipped WikiText-2 sample)")
    try:
        data = lzma.decompress(path.read_bytes())
    except lzma.LZMAError as error:
        raise DataError(f"{path}: cannot decompress ({error})") from None
    name = path.name[: -len(".xz")]
    actual = hashlib.sha256(data).hexdigest()
    if actual != SAMPLE_SHA256[name]:
        raise DataError(f"{path}: decompressed sha256 {actual} differs from the recorded {SAMPLE_SHA256[name]}")
    return data


def sample_sources(sample_dir: Path) -> Dict[str, SourceFile]:
    """train = wiki.valid.tokens; valid/test = first/second half of the lines of wiki.test.tokens."""
    train_path, test_path = sample_dir / "wiki.valid.tokens.xz", sample_dir / "wiki.test.tokens.xz"
    _read_sample(train_path)  # checks the shipped file before any work
    lines = _read_sample(test_path).splitlines(keepends=True)
    half = len(lines) // 2
    return {
        "train": file_source(train_path),
        "valid": bytes_source(f"{test_path} (lines 1-{half})", b"".join(lines[:half])),
        "test": bytes_source(f"{test_path} (lines {half + 1}-{len(lines)})", b"".join(lines[half:])),
    }


@PREPROCESSORS.register("wikitext2_sample", WikiText2SampleConfig)
def wikitext2_sample(cfg: WikiText2SampleConfig) -> None:
    """The shipped WikiText-2 sample: a real, small word-level dataset for the default run and the tests."""
    sample_dir = Path(cfg.sample_dir).expanduser()
    write_word_dataset(
        sample_sources(sample_dir),
        cfg.destdir,
        overwrite=cfg.overwrite,
        extra_meta={"recipe": "wikitext2_sample", "split_scheme": SAMPLE_SCHEME, "sample_dir": str(sample_dir)},
    )
