"""What a dataset folder made by tk-preprocess holds, told from its meta.json, so that a task can refuse the
dataset of another task in one line (instead of failing on a missing key deep inside its loader)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from toolkit.errors import DataError

WORD_FORMAT = "toolkit.word_corpus/1"  # toolkit.data.word_corpus.FORMAT (not imported: that module is heavy)

# kind -> what a task of that kind needs, with the recipes that make it
NEEDS = {
    "char": "a character-level dataset (tk-preprocess config=text8 or config=enwik8)",
    "word": "a word-level dataset (tk-preprocess config=wikitext103, wikitext2 or wikitext2_sample)",
    "translation": "a translation dataset (tk-preprocess config=iwslt14_de_en, iwslt14_sample or wmt14_en_de)",
}


def _kind(meta: dict) -> Optional[str]:
    if meta.get("format") == WORD_FORMAT:
        return "word"
    if "src_lang" in meta and "tgt_lang" in meta:
        return "translation"
    if meta.get("format") == "uint8" and "corpus" in meta:
        return "char"
    return None


def _description(kind: Optional[str], meta: dict) -> str:
    if kind == "char":
        return f"a character-level dataset ({meta.get('corpus')}, {meta.get('vocab_size')} symbols)"
    if kind == "word":
        return f"a word-level dataset (vocabulary {meta.get('vocab_size')})"
    if kind == "translation":
        return f"a translation dataset ({meta.get('src_lang')}-{meta.get('tgt_lang')})"
    return "a meta.json of no known dataset format"


def read_dataset_kind(data_dir: str | Path) -> tuple[Optional[str], str]:
    """(kind or None, a description of what the folder holds)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        return None, "no meta.json (not a folder made by tk-preprocess)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        return None, "a meta.json of no known dataset format"
    kind = _kind(meta)
    return kind, _description(kind, meta)


def require_dataset(data_dir: str | Path, kind: str, task: str) -> None:
    """Raise a one-line DataError unless `data_dir` holds a dataset of `kind` (char, word or translation)."""
    found, description = read_dataset_kind(data_dir)
    if found != kind:
        raise DataError(f"data={data_dir} holds {description}, but task {task} needs {NEEDS[kind]}")


def missing_data(data_dir: Optional[str | Path], kind: str, task: str) -> DataError:
    """The error for a task asked to read a subset without a data folder."""
    if data_dir is None:
        return DataError(f"no data folder given (data=DIR); task {task} needs {NEEDS[kind]}")
    return DataError(f"data={data_dir}: no such folder; task {task} needs {NEEDS[kind]}")
