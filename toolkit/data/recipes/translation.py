"""tk-preprocess recipes for machine translation: `iwslt14_de_en`, `iwslt14_sample`, `wmt14_en_de`.

    tk-preprocess config=iwslt14_sample destdir=data-bin/iwslt14_sample
    tk-preprocess config=iwslt14_de_en input=de-en.tgz destdir=data-bin/iwslt14
    tk-preprocess config=wmt14_en_de train=[training-parallel-europarl-v7.tgz,training-parallel-commoncrawl.tgz,\
training-parallel-nc-v9.tgz] valid=dev.tgz test=test-full.tgz destdir=data-bin/wmt14_en_de

Dataset folder (fairseq-like names; SRC-TGT is e.g. de-en):
  {train,valid,test}.SRC-TGT.{SRC,TGT}.{bin,idx}   token ids (toolkit/data/indexed_dataset.py), no bos/eos
  spm.model, spm.vocab                              the joint sentencepiece model (bos=0 pad=1 eos=2 unk=3)
  {valid,test}.{SRC,TGT}.txt                        normalized reference text, one line per pair (for BLEU)
  meta.json                                         languages, split sizes, sources with sha256, settings

Differences from fairseq's prepare-iwslt14.sh / prepare-wmt14en2de.sh: no Moses tokenization and no
subword-nmt BPE. Text is only normalized (NFKC, whitespace collapsed, lowercased for IWSLT) and a joint
sentencepiece BPE model is learned on the raw text, so the model's output is detokenized text. The splits
and the cleaning rule (clean-corpus-n: ratio, min/max words) are fairseq's; IWSLT counts words on Moses-
tokenized text (sacremoses) for that rule exactly as fairseq's cleaning sees them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
from omegaconf import MISSING, DictConfig

from toolkit.config.ranges import bounded
from toolkit.data.atomic import atomic_output_dir
from toolkit.data.indexed_dataset import best_dtype
from toolkit.data.parallel_corpus import (
    CleanSettings,
    FileSource,
    WordCounter,
    check_same_count,
    clean_stream,
    count_lines,
    every_nth,
    file_record,
    iter_lines,
    iter_pairs,
    normalize_line,
    read_segment_pair,
    read_train_tags,
    sample_indices,
    write_lines,
)
from toolkit.data.spm import SPECIAL_IDS, Binarizer, SpmTrainSettings, SpmVocab, train_spm
from toolkit.errors import ConfigError, DataError
from toolkit.registry import PREPROCESSORS

logger = logging.getLogger(__name__)

REPO_DATA = Path(__file__).resolve().parents[3] / "data"
IWSLT_SAMPLE = REPO_DATA / "iwslt14" / "iwslt14-de-en-devtest.tar.xz"
IWSLT_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")  # fairseq's test order
WMT14_CORPORA = ["europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en"]


class SpmModelType(StrEnum):
    """The sentencepiece model learned on the training text."""

    bpe = "bpe"
    unigram = "unigram"


class CleanTokenizer(StrEnum):
    """How the cleaning rule counts words."""

    moses = "moses"  # sacremoses tokens, as fairseq's cleaning counts them
    whitespace = "whitespace"  # fast: whitespace-separated words


@dataclass
class TranslationPrepConfig:
    """Options shared by the translation recipes."""

    destdir: str = MISSING
    """Dataset folder to create (atomically: it appears complete or not at all)."""
    src_lang: str = "de"
    """Source language code (file suffix)."""
    tgt_lang: str = "en"
    """Target language code."""
    vocab_size: int = bounded(10000, ge=8)
    """Joint sentencepiece vocabulary size, the 4 special ids included."""
    spm_model_type: SpmModelType = SpmModelType.bpe
    """sentencepiece model type (bpe or unigram)."""
    character_coverage: float = bounded(1.0, gt=0, le=1)
    """Fraction of training characters that get their own piece."""
    spm_sample_sentences: int = bounded(1_000_000, ge=2)
    """Sentences (both languages together, sampled as pairs) the sentencepiece model is learned on."""
    lowercase: bool = False
    """Lowercase all text (the IWSLT14 protocol)."""
    nfkc: bool = True
    """Unicode NFKC normalization before anything else."""
    seed: int = 1
    """Seed of the sentencepiece training sample."""
    workers: int = bounded(0, ge=0)
    """Processes for binarization (and Moses word counts); 0 = one per CPU core."""
    chunk_lines: int = bounded(10000, ge=1)
    """Lines per binarization work item."""
    overwrite: bool = False
    """Replace an existing, non-empty destdir (only once the new folder is complete)."""
    cache_dir: str = "~/.cache/toolkit/downloads"
    """Where URL inputs are downloaded to and reused from."""


@dataclass
class Iwslt14Config(TranslationPrepConfig):
    """The IWSLT 2014 de-en release (de-en.tgz or its unpacked folder), split as fairseq does."""

    input: str = MISSING
    """Path or URL of the release: the de-en .tgz, or a folder with train.tags.de-en.* and the xml files."""
    sha256: Optional[str] = None
    """Expected sha256 of the input archive; None: unchecked."""
    vocab_size: int = bounded(10000, ge=8)
    lowercase: bool = True
    valid_every: int = bounded(23, ge=2)
    """Every n-th line (1-based) of the cleaned training text becomes valid."""
    clean_ratio: float = bounded(1.5, ge=1)
    """Drop training pairs whose word-count ratio exceeds this."""
    clean_min_words: int = bounded(1, ge=0)
    """Drop training pairs with fewer words on a side."""
    clean_max_words: int = bounded(175, ge=1)
    """Drop training pairs with more words on a side."""
    clean_tokenizer: CleanTokenizer = CleanTokenizer.moses
    """How the cleaning rule counts words: moses (fairseq's counts) or whitespace."""


@dataclass
class Iwslt14SampleConfig(TranslationPrepConfig):
    """The shipped IWSLT14 dev/test sample: no training data exists here, so train on some test sets."""

    input: str = str(IWSLT_SAMPLE)
    """The release's xml files (folder or archive); defaults to the sample shipped in data/iwslt14/."""
    sha256: Optional[str] = None
    """Expected sha256 of the input archive; None: unchecked."""
    vocab_size: int = bounded(4000, ge=8)
    lowercase: bool = True
    train_sets: List[str] = field(default_factory=lambda: ["TED.tst2010", "TED.tst2011", "TED.tst2012"])
    """xml sets concatenated into train (4,698 pairs by default)."""
    valid_sets: List[str] = field(default_factory=lambda: ["TEDX.dev2012"])
    """xml sets for valid (1,165 pairs)."""
    test_sets: List[str] = field(default_factory=lambda: ["TED.dev2010"])
    """xml sets for test (887 pairs)."""


@dataclass
class Wmt14Config(TranslationPrepConfig):
    """WMT14 en-de: Europarl v7 + Common Crawl + News Commentary v9; newstest2013 valid; newstest2014 test."""

    train: List[str] = MISSING
    """Paths/URLs (folders, tar archives or plain files) holding the training corpora files."""
    corpora: List[str] = field(default_factory=lambda: list(WMT14_CORPORA))
    """Training corpora by file prefix: PREFIX.SRC and PREFIX.TGT are read from the train inputs."""
    valid: str = MISSING
    """Path/URL (folder, archive or file) with PREFIX.{SRC,TGT} or PREFIX-src.SRC.sgm/PREFIX-ref.TGT.sgm."""
    valid_prefix: str = "newstest2013"
    test: str = MISSING
    """Path/URL (folder or archive) with the test set, same naming as valid."""
    test_prefix: str = "newstest2014-deen"
    sha256: List[str] = field(default_factory=list)
    """Expected digests as NAME:HEX, NAME the file name of an input path/URL; others unchecked."""
    src_lang: str = "en"
    tgt_lang: str = "de"
    vocab_size: int = bounded(32000, ge=8)
    clean_ratio: float = bounded(1.5, ge=1)
    clean_min_words: int = bounded(1, ge=0)
    clean_max_words: int = bounded(250, ge=1)
    clean_tokenizer: CleanTokenizer = CleanTokenizer.whitespace
    """Word counts for the cleaning rule: whitespace (fast, 4.5M pairs) or moses."""


# ---- the shared pipeline: split text files -> spm -> binary datasets + references + meta.json -----------------


@dataclass
class SplitText:
    """A split's normalized text, one file per language, and where it came from."""

    src: Path
    tgt: Path
    pairs: int
    origin: str


def _workers(cfg: DictConfig) -> int:
    return cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)


def _check_common(cfg: DictConfig) -> None:
    if cfg.src_lang == cfg.tgt_lang:
        raise ConfigError(f"src_lang and tgt_lang are both '{cfg.src_lang}'")
    if cfg.vocab_size < 8:
        raise ConfigError(f"vocab_size must be at least 8, got {cfg.vocab_size}")
    if cfg.spm_sample_sentences < 2:
        raise ConfigError(f"spm_sample_sentences must be at least 2, got {cfg.spm_sample_sentences}")


def _spm_sample(train: SplitText, cfg: DictConfig, scratch: Path) -> tuple[list[Path], int]:
    """Write a seeded sample of train pairs (both sides) for sentencepiece; returns the files and pair count."""
    chosen = np.zeros(train.pairs, dtype=bool)
    chosen[sample_indices(train.pairs, cfg.spm_sample_sentences // 2, cfg.seed)] = True
    paths = [scratch / f"spm-sample.{cfg.src_lang}", scratch / f"spm-sample.{cfg.tgt_lang}"]
    with open(paths[0], "w", encoding="utf-8") as f_src, open(paths[1], "w", encoding="utf-8") as f_tgt:
        for keep, (a, b) in zip(chosen, iter_pairs(train.src, train.tgt)):
            if keep:
                f_src.write(a + "\n")
                f_tgt.write(b + "\n")
    return paths, int(chosen.sum())


def build_dataset(cfg: DictConfig, out: Path, scratch: Path, splits: dict[str, SplitText], extra: dict) -> dict:
    """Learn the joint model on train, binarize every split, write references and meta.json into `out`."""
    src, tgt = cfg.src_lang, cfg.tgt_lang
    workers = _workers(cfg)
    sample, sample_pairs = _spm_sample(splits["train"], cfg, scratch)
    settings = SpmTrainSettings(cfg.vocab_size, str(cfg.spm_model_type), cfg.character_coverage, cfg.seed, workers)
    model = train_spm(sample, out / "spm", settings)
    vocab = SpmVocab(model)
    dtype = best_dtype(len(vocab))
    split_meta = {}
    with Binarizer(model, dtype, workers, cfg.chunk_lines) as binarizer:
        for name, text in splits.items():
            entry: dict = {"pairs": text.pairs, "from": text.origin}
            for side, lang, path in (("src", src, text.src), ("tgt", tgt, text.tgt)):
                prefix = out / f"{name}.{src}-{tgt}.{lang}"
                stats = binarizer.binarize(path, prefix, text.pairs, f"{name}.{lang}")
                entry.update({f"{side}_prefix": prefix.name, f"{side}_tokens": stats.tokens, f"{side}_unk": stats.unk})
                if name != "train":
                    shutil.copyfile(path, out / f"{name}.{lang}.txt")
                    entry[f"{side}_reference"] = f"{name}.{lang}.txt"
            split_meta[name] = entry
    meta = {
        "src_lang": src,
        "tgt_lang": tgt,
        "splits": split_meta,
        "vocab_size": len(vocab),
        "dtype": str(dtype),
        "special_ids": SPECIAL_IDS,
        "spm": {
            "model": "spm.model",
            "model_type": cfg.spm_model_type,
            "vocab_size": cfg.vocab_size,
            "character_coverage": cfg.character_coverage,
            "normalization_rule_name": "identity",
            "trained_on_pairs": sample_pairs,
            "seed": cfg.seed,
        },
        "normalization": {"nfkc": cfg.nfkc, "lowercase": cfg.lowercase, "whitespace": "collapsed and trimmed"},
        **extra,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def run_recipe(cfg: DictConfig, recipe: str, prepare: Callable[[Path], tuple[dict[str, SplitText], dict]]) -> dict:
    """Read and check the inputs (prepare), then build the dataset; all inside one atomic output folder."""
    _check_common(cfg)
    destdir = Path(cfg.destdir).expanduser()
    with atomic_output_dir(destdir, overwrite=cfg.overwrite) as out:
        scratch = out / ".scratch"
        scratch.mkdir()
        splits, extra = prepare(scratch)
        counts = ", ".join(f"{name} {text.pairs:,}" for name, text in splits.items())
        logger.info("%s: %s pairs; learning sentencepiece (%d) and binarizing", recipe, counts, cfg.vocab_size)
        meta = build_dataset(cfg, out, scratch, splits, {"recipe": recipe, **extra})
        shutil.rmtree(scratch)
    logger.info("wrote %s (%s, vocabulary %d, %s)", destdir, counts, meta["vocab_size"], meta["dtype"])
    return meta


def _normalized(lines: list[str], cfg: DictConfig, fix: Optional[Callable[[str], str]] = None) -> list[str]:
    """normalize_line over lines (config values read once: OmegaConf attribute access is slow)."""
    lowercase, nfkc = bool(cfg.lowercase), bool(cfg.nfkc)
    if fix is not None:
        lines = [fix(line) for line in lines]
    return [normalize_line(line, lowercase, nfkc) for line in lines]


def _write_split(
    scratch: Path, name: str, langs: tuple[str, str], src: list[str], tgt: list[str], origin: str
) -> SplitText:
    paths = (scratch / f"{name}.{langs[0]}", scratch / f"{name}.{langs[1]}")
    write_lines(paths[0], src)
    write_lines(paths[1], tgt)
    return SplitText(paths[0], paths[1], len(src), origin)


# ---- IWSLT14 ------------------------------------------------------------------------------------------------


def fairseq_apostrophe(text: str) -> str:
    """prepare-iwslt14.sh maps the right single quotation mark to an ASCII apostrophe in the xml sets."""
    return text.replace("\u2019", "'")


def _iwslt_langs(cfg: DictConfig) -> tuple[str, str]:
    if {cfg.src_lang, cfg.tgt_lang} != {"de", "en"}:
        raise ConfigError(f"IWSLT14 de-en has languages de and en, got src_lang={cfg.src_lang} tgt_lang={cfg.tgt_lang}")
    return cfg.src_lang, cfg.tgt_lang


def _xml_name(xml_set: str, lang: str) -> str:
    return f"IWSLT14.{xml_set}.de-en.{lang}.xml"


def _xml_names(sets: list[str], langs: tuple[str, str]) -> list[str]:
    for xml_set in sets:
        if xml_set not in IWSLT_SETS:
            raise ConfigError(f"unknown IWSLT14 set '{xml_set}'; valid: {', '.join(IWSLT_SETS)}")
    return [_xml_name(xml_set, lang) for xml_set in sets for lang in langs]


def _read_xml_sets(
    source: FileSource, sets: list[str], langs: tuple[str, str], cfg: DictConfig
) -> tuple[list[str], list[str], list[dict]]:
    """Concatenated, normalized segments of the named xml sets (in the given order) and file records."""
    names = _xml_names(sets, langs)
    files = source.require(names, "IWSLT14 release")
    src_out: list[str] = []
    tgt_out: list[str] = []
    for xml_set in sets:
        a, b = read_segment_pair(files[_xml_name(xml_set, langs[0])], files[_xml_name(xml_set, langs[1])])
        src_out += _normalized(a, cfg, fairseq_apostrophe)
        tgt_out += _normalized(b, cfg, fairseq_apostrophe)
    return src_out, tgt_out, [file_record(files[name], name) for name in names]


@PREPROCESSORS.register("iwslt14_de_en", Iwslt14Config)
def preprocess_iwslt14(cfg: DictConfig) -> dict:
    """IWSLT14: train/valid from train.tags (valid = every 23rd cleaned line), test = the 5 xml sets (6,750)."""
    langs = _iwslt_langs(cfg)

    def prepare(scratch: Path) -> tuple[dict[str, SplitText], dict]:
        source = FileSource(cfg.input, Path(cfg.cache_dir).expanduser(), scratch, cfg.sha256)
        tag_names = [f"train.tags.de-en.{lang}" for lang in langs]
        tags = source.require(tag_names + _xml_names(list(IWSLT_SETS), langs), "IWSLT14 release")
        src_lines, tgt_lines = (read_train_tags(tags[name]) for name in tag_names)
        if len(src_lines) != len(tgt_lines):
            raise DataError(
                f"{tags[tag_names[0]]} has {len(src_lines)} text lines but {tags[tag_names[1]]} has "
                f"{len(tgt_lines)} (after removing the meta lines); they must be aligned"
            )
        test_src, test_tgt, xml_records = _read_xml_sets(source, list(IWSLT_SETS), langs, cfg)
        rule = CleanSettings(cfg.clean_ratio, cfg.clean_min_words, cfg.clean_max_words)
        cleaned = (scratch / f"clean.{langs[0]}", scratch / f"clean.{langs[1]}")
        with WordCounter(cfg.clean_tokenizer, _workers(cfg)) as counter:
            stats = clean_stream(
                zip(src_lines, tgt_lines), langs, rule, counter, cfg.lowercase, cfg.nfkc, cleaned, total=len(src_lines)
            )
        clean_src, clean_tgt = (list(iter_lines(path)) for path in cleaned)
        keep, held = every_nth(len(clean_src), cfg.valid_every)
        splits = {
            "train": _write_split(
                scratch,
                "train",
                langs,
                [clean_src[i] for i in keep],
                [clean_tgt[i] for i in keep],
                "train.tags, cleaned, without every valid_every-th line",
            ),
            "valid": _write_split(
                scratch,
                "valid",
                langs,
                [clean_src[i] for i in held],
                [clean_tgt[i] for i in held],
                f"every {cfg.valid_every}th line of the cleaned train.tags",
            ),
            "test": _write_split(scratch, "test", langs, test_src, test_tgt, " + ".join(IWSLT_SETS)),
        }
        extra = {
            "corpus": "IWSLT 2014 de-en (TED; CC BY-NC-ND 3.0)",
            "cleaning": {**vars(rule), "tokenizer": cfg.clean_tokenizer, "read": stats.read, "kept": stats.kept},
            "sources": {
                "input": source.provenance(),
                "files": [file_record(tags[name], name) for name in tag_names] + xml_records,
            },
        }
        return splits, extra

    return run_recipe(cfg, "iwslt14_de_en", prepare)


@PREPROCESSORS.register("iwslt14_sample", Iwslt14SampleConfig)
def preprocess_iwslt14_sample(cfg: DictConfig) -> dict:
    """The shipped sample: train = tst2010+tst2011+tst2012, valid = TEDX.dev2012, test = dev2010 (defaults)."""
    langs = _iwslt_langs(cfg)

    def prepare(scratch: Path) -> tuple[dict[str, SplitText], dict]:
        source = FileSource(cfg.input, Path(cfg.cache_dir).expanduser(), scratch, cfg.sha256)
        every_set = [s for name in ("train", "valid", "test") for s in cfg[f"{name}_sets"]]
        source.require(_xml_names(every_set, langs), "IWSLT14 release")  # all missing files named at once
        splits, records = {}, []
        for name in ("train", "valid", "test"):
            sets = list(cfg[f"{name}_sets"])
            src, tgt, files = _read_xml_sets(source, sets, langs, cfg)
            splits[name] = _write_split(scratch, name, langs, src, tgt, " + ".join(sets))
            records += files
        extra = {
            "corpus": "IWSLT 2014 de-en dev/test sets only (TED; CC BY-NC-ND 3.0)",
            "note": (
                "Not the IWSLT14 protocol: no training data is shipped, so this sample trains on test sets "
                f"({' + '.join(cfg.train_sets)}), validates on {' + '.join(cfg.valid_sets)} and tests on "
                f"{' + '.join(cfg.test_sets)}. Scores are not comparable to published IWSLT14 results."
            ),
            "sources": {"input": source.provenance(), "files": records},
        }
        return splits, extra

    return run_recipe(cfg, "iwslt14_sample", prepare)


# ---- WMT14 ----------------------------------------------------------------------------------------------------


def _digest_for(spec: str, entries: List[str]) -> Optional[str]:
    """The NAME:HEX entry whose NAME is the file name of spec (path or URL)."""
    name = spec.rstrip("/").rsplit("/", 1)[-1]
    for entry in entries:
        key, _, digest = entry.rpartition(":")
        if not key or not digest:
            raise ConfigError(f"sha256 entries must be NAME:HEX, got '{entry}'")
        if key == name:
            return digest
    return None


def _read_eval_set(
    source: FileSource, prefix: str, langs: tuple[str, str], what: str
) -> tuple[list[str], list[str], list[dict]]:
    """A valid/test set as plain PREFIX.{src,tgt} or as PREFIX-src.SRC.sgm + PREFIX-ref.TGT.sgm."""
    plain = [f"{prefix}.{langs[0]}", f"{prefix}.{langs[1]}"]
    sgm = [f"{prefix}-src.{langs[0]}.sgm", f"{prefix}-ref.{langs[1]}.sgm"]
    found = source.find(plain)
    if len(found) == 2:
        a, b = (list(iter_lines(found[name])) for name in plain)
        check_same_count(found[plain[0]], len(a), found[plain[1]], len(b))
        names = plain
    else:
        found = source.find(sgm)
        if len(found) != 2:
            raise DataError(f"{what} {source.path} has neither {' + '.join(plain)} nor {' + '.join(sgm)}")
        a, b = read_segment_pair(found[sgm[0]], found[sgm[1]])
        names = sgm
    return a, b, [file_record(found[name], name) for name in names]


@PREPROCESSORS.register("wmt14_en_de", Wmt14Config)
def preprocess_wmt14(cfg: DictConfig) -> dict:
    """WMT14: clean and concatenate the training corpora, newstest2013 valid, newstest2014 (full) test."""
    langs = (cfg.src_lang, cfg.tgt_lang)
    cache = Path(cfg.cache_dir).expanduser()

    def prepare(scratch: Path) -> tuple[dict[str, SplitText], dict]:
        train_sources = [FileSource(spec, cache, scratch, _digest_for(spec, cfg.sha256)) for spec in cfg.train]
        valid_source = FileSource(cfg.valid, cache, scratch, _digest_for(cfg.valid, cfg.sha256))
        test_source = FileSource(cfg.test, cache, scratch, _digest_for(cfg.test, cfg.sha256))
        wanted = [f"{corpus}.{lang}" for corpus in cfg.corpora for lang in langs]
        files: dict[str, Path] = {}
        for source in train_sources:
            files.update(source.find([name for name in wanted if name not in files]))
        missing = [name for name in wanted if name not in files]
        if missing:
            raise DataError(f"training corpora not found: {', '.join(missing)} (searched {', '.join(cfg.train)})")
        counts = {name: count_lines(files[name]) for name in wanted}
        for corpus in cfg.corpora:
            a, b = (f"{corpus}.{lang}" for lang in langs)
            check_same_count(files[a], counts[a], files[b], counts[b])
        splits, records = {}, [file_record(files[name], name) for name in wanted]
        for name, source, prefix in (("valid", valid_source, cfg.valid_prefix), ("test", test_source, cfg.test_prefix)):
            a, b, used = _read_eval_set(source, prefix, langs, name)
            src, tgt = _normalized(a, cfg), _normalized(b, cfg)
            splits[name] = _write_split(scratch, name, langs, src, tgt, " + ".join(r["name"] for r in used))
            records += used

        def train_pairs():
            for corpus in cfg.corpora:
                # web-crawled text has a few invalid UTF-8 bytes: they become U+FFFD rather than stop the run
                yield from iter_pairs(files[f"{corpus}.{langs[0]}"], files[f"{corpus}.{langs[1]}"], errors="replace")

        rule = CleanSettings(cfg.clean_ratio, cfg.clean_min_words, cfg.clean_max_words)
        train = (scratch / f"train.{langs[0]}", scratch / f"train.{langs[1]}")
        total = sum(counts[f"{corpus}.{langs[0]}"] for corpus in cfg.corpora)
        with WordCounter(cfg.clean_tokenizer, _workers(cfg)) as counter:
            stats = clean_stream(train_pairs(), langs, rule, counter, cfg.lowercase, cfg.nfkc, train, total=total)
        if stats.kept == 0:
            raise DataError(
                f"no training pair survived cleaning (of {stats.read}); check the corpora and clean_* settings"
            )
        splits = {"train": SplitText(train[0], train[1], stats.kept, " + ".join(cfg.corpora) + ", cleaned"), **splits}
        extra = {
            "corpus": "WMT14 " + "-".join(langs),
            "cleaning": {**vars(rule), "tokenizer": cfg.clean_tokenizer, "read": stats.read, "kept": stats.kept},
            "sources": {
                "inputs": [s.provenance() for s in (*train_sources, valid_source, test_source)],
                "files": records,
            },
        }
        return splits, extra

    return run_recipe(cfg, "wmt14_en_de", prepare)
