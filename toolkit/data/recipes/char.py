"""tk-preprocess recipes for the character corpora: `config=text8` and `config=enwik8`.

tk-preprocess config=text8 input=data/text8/text8-prefix-5M.xz destdir=data-bin/text8
tk-preprocess config=enwik8 input=https://.../enwik8.zip sha256=... destdir=data-bin/enwik8
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, DictConfig

from toolkit.data.char_corpus import preprocess_char_corpus
from toolkit.data.download import resolve_input
from toolkit.registry import PREPROCESSORS

logger = logging.getLogger(__name__)


@dataclass
class CharCorpusConfig:
    """Options shared by the character-level corpus recipes."""

    input: str = MISSING
    """Local path, file:// or http(s):// URL of the corpus: plain, .zip, .xz or .gz."""
    destdir: str = MISSING
    """Dataset folder to create: train/valid/test.bin, vocab.json, meta.json."""
    sha256: Optional[str] = None
    """Expected sha256 (hex) of the input file as given (the archive, not its content); None: unchecked."""
    overwrite: bool = False
    """Replace an existing, non-empty destdir (only once the new folder is complete)."""
    cache_dir: str = "~/.cache/toolkit/downloads"
    """Where URL inputs are downloaded to and reused from."""


@dataclass
class Text8Config(CharCorpusConfig):
    """text8: 27 symbols (space, a-z); ids 0 = ' ', 1..26 = 'a'..'z'."""


@dataclass
class Enwik8Config(CharCorpusConfig):
    """enwik8: raw bytes; id = byte value, 256 symbols."""


def _run(corpus: str, cfg: DictConfig) -> None:
    source = resolve_input(cfg.input, Path(cfg.cache_dir).expanduser(), cfg.sha256)
    destdir = Path(cfg.destdir).expanduser()
    meta = preprocess_char_corpus(corpus, source, destdir, overwrite=cfg.overwrite)
    sizes = ", ".join(f"{name} {split['tokens']:,}" for name, split in meta["splits"].items())
    logger.info(
        "wrote %s: %s tokens (%s; vocabulary %d, uint8) + vocab.json, meta.json%s",
        destdir,
        corpus,
        sizes,
        meta["vocab_size"],
        "" if meta["full_corpus"] else " [not the full corpus]",
    )


@PREPROCESSORS.register("text8", Text8Config)
def preprocess_text8(cfg: DictConfig) -> None:
    """Build a text8 dataset folder from cfg.input."""
    _run("text8", cfg)


@PREPROCESSORS.register("enwik8", Enwik8Config)
def preprocess_enwik8(cfg: DictConfig) -> None:
    """Build an enwik8 dataset folder from cfg.input."""
    _run("enwik8", cfg)
