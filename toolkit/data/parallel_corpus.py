"""Reading, checking, cleaning and splitting parallel corpora (IWSLT xml, WMT sgm/plain text, train.tags).

Every problem with an input file is a DataError of one line naming the file (and the line, where there is
one). Text files are read with newline="\\n" only: a stray carriage return inside a line must not split it,
or the two sides of a parallel corpus would drift apart.
"""

from __future__ import annotations

import html
import itertools
import lzma
import multiprocessing
import multiprocessing.pool
import re
import shutil
import tarfile
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from toolkit.data.atomic import OUTPUT_ERRNOS
from toolkit.data.download import resolve_input, sha256_file
from toolkit.errors import ConfigError, DataError

ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
SEG = re.compile(r"^\s*<seg\b[^>]*>(.*)</seg>\s*$")
SET_TAGS = ("srcset", "refset", "tstset", "mteval")
# fairseq's prepare-iwslt14.sh: drop lines holding these tags, strip these other tags but keep the text.
TAGS_DROPPED = ("<url>", "<talkid>", "<keywords>")
TAGS_STRIPPED = re.compile(r"</?(title|description)>")


# ---- normalization ---------------------------------------------------------------------------------------


def normalize_line(text: str, lowercase: bool, nfkc: bool = True) -> str:
    """What every line goes through before sentencepiece: NFKC, whitespace runs -> one space, trim, lower."""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = " ".join(text.split())
    return text.lower() if lowercase else text


# ---- plain text --------------------------------------------------------------------------------------------


def read_lines(path: Path, errors: str = "strict") -> list[str]:
    """All lines of a UTF-8 text file, without their newline."""
    return list(iter_lines(path, errors))


def iter_lines(path: Path, errors: str = "strict") -> Iterator[str]:
    """Lines of a UTF-8 text file, streamed; invalid UTF-8 (errors='strict') names the file and its line.

    Each line is decoded on its own (split at b"\\n" only), so the line number of a bad byte is exact.
    """
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8", errors)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[error.start]:02x}: {error.reason})"
                ) from None
            yield line[:-1] if line.endswith("\n") else line


def count_lines(path: Path) -> int:
    """Number of lines (a last line without a newline counts), read in binary chunks."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def check_same_count(src: Path, n_src: int, tgt: Path, n_tgt: int) -> None:
    if n_src != n_tgt:
        raise DataError(f"{src} has {n_src} lines but {tgt} has {n_tgt}; a parallel corpus needs equal counts")


def iter_pairs(src: Path, tgt: Path, errors: str = "strict") -> Iterator[tuple[str, str]]:
    """Aligned line pairs of two files; unequal line counts are a DataError naming both files and counts."""
    for a, b in itertools.zip_longest(iter_lines(src, errors), iter_lines(tgt, errors)):
        if a is None or b is None:
            check_same_count(src, count_lines(src), tgt, count_lines(tgt))
        yield a, b


# ---- xml / sgm ---------------------------------------------------------------------------------------------


def read_segments(path: Path) -> list[str]:
    """Text of every <seg> of an IWSLT xml or WMT sgm file, entities unescaped, in file order.

    Checked: each <seg> sits on one line inside a <doc>, every <doc> and set element is closed (a cut-off
    file fails), and there is at least one segment.
    """
    segments: list[str] = []
    open_doc = open_set = 0  # line numbers of the currently open elements (0: none)
    set_name = ""
    lineno = 0
    for lineno, line in enumerate(iter_lines(path), 1):
        stripped = line.strip()
        if "<seg" in stripped:
            match = SEG.match(stripped)
            if match is None:
                raise DataError(f"{path}:{lineno}: malformed <seg> line (expected <seg id=...>text</seg> on one line)")
            if not open_doc:
                raise DataError(f"{path}:{lineno}: <seg> outside a <doc> element")
            segments.append(html.unescape(match.group(1)).strip())
        elif stripped.startswith("<doc"):
            if open_doc:
                raise DataError(f"{path}:{lineno}: <doc> opened before the <doc> of line {open_doc} was closed")
            open_doc = lineno
        elif stripped.startswith("</doc>"):
            if not open_doc:
                raise DataError(f"{path}:{lineno}: </doc> without an open <doc>")
            open_doc = 0
        elif any(stripped.startswith(f"<{tag}") for tag in SET_TAGS) and not open_set:
            open_set, set_name = lineno, stripped[1:].split(">")[0].split()[0]
        elif stripped.startswith(f"</{set_name}>") and open_set:
            open_set = 0
    last = f"{path}:{lineno}"
    if open_doc:
        raise DataError(f"{last}: file ends inside the <doc> opened on line {open_doc} (truncated?)")
    if open_set:
        raise DataError(f"{last}: file ends before </{set_name}> (opened on line {open_set}; truncated?)")
    if not segments:
        raise DataError(f"{path}: no <seg> elements found; not an xml/sgm test set file")
    return segments


def read_segment_pair(src: Path, tgt: Path) -> tuple[list[str], list[str]]:
    """Segments of two aligned xml/sgm files; unequal counts name both files."""
    a, b = read_segments(src), read_segments(tgt)
    if len(a) != len(b):
        raise DataError(f"{src} has {len(a)} segments but {tgt} has {len(b)}; aligned files need equal counts")
    return a, b


def read_train_tags(path: Path) -> list[str]:
    """Transcript lines of an IWSLT train.tags file, filtered as fairseq's prepare-iwslt14.sh does.

    Lines with <url>, <talkid> or <keywords> are dropped; <title> and <description> lose their tags but keep
    their text (fairseq trains on talk titles and descriptions too). Any other line that is a lone tag
    (starts with '<' and ends with '>') is dropped as well: none exists in the 2014 de-en release, but a
    release that adds some would otherwise leak markup into the training text.
    """
    out = []
    for line in iter_lines(path):
        if any(tag in line for tag in TAGS_DROPPED):
            continue
        line = TAGS_STRIPPED.sub("", line)
        stripped = line.strip()
        if stripped.startswith("<") and stripped.endswith(">"):
            continue
        out.append(line)
    return out


# ---- cleaning and splitting --------------------------------------------------------------------------------


def _moses_counts(args: tuple[str, list[str]]) -> np.ndarray:
    from sacremoses import MosesTokenizer  # imported here: only the moses counter (and its workers) need it

    lang, lines = args
    tokenizer = MosesTokenizer(lang=lang)
    return np.fromiter((len(tokenizer.tokenize(line, escape=False)) for line in lines), np.int64, len(lines))


class WordCounter:
    """Words per line: 'whitespace' split, or 'moses' tokens (sacremoses, as fairseq's cleaning counts them).

    Moses tokenization is slow (~10k lines/s), so with workers > 1 it runs in a process pool, kept open
    while the counter is used as a context manager.
    """

    CHUNK = 20000

    def __init__(self, tokenizer: str, workers: int = 1):
        if tokenizer not in ("whitespace", "moses"):
            raise ConfigError(f"clean_tokenizer must be 'whitespace' or 'moses', got '{tokenizer}'")
        self.tokenizer = tokenizer
        self.workers = workers
        self._pool: Optional[multiprocessing.pool.Pool] = None

    def __enter__(self) -> "WordCounter":
        if self.tokenizer == "moses" and self.workers > 1:
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __call__(self, lines: Sequence[str], lang: str) -> np.ndarray:
        if self.tokenizer == "whitespace":
            return np.fromiter(map(len, map(str.split, lines)), np.int64, len(lines))
        jobs = [(lang, list(lines[i : i + self.CHUNK])) for i in range(0, len(lines), self.CHUNK)]
        parts = self._pool.map(_moses_counts, jobs) if self._pool and len(jobs) > 1 else map(_moses_counts, jobs)
        return np.concatenate([np.zeros(0, dtype=np.int64), *parts])


@dataclass
class CleanSettings:
    """The clean-corpus-n rule: keep a pair when both sides have min..max words and their ratio <= ratio."""

    ratio: float = 1.5
    """Largest allowed words(longer side) / words(shorter side)."""
    min_words: int = 1
    """Fewer words on either side: dropped (1 drops empty lines)."""
    max_words: int = 250
    """More words on either side: dropped."""


def keep_mask(src_words: np.ndarray, tgt_words: np.ndarray, rule: CleanSettings) -> np.ndarray:
    """Boolean mask of the pairs that pass the cleaning rule (vectorised over the corpus)."""
    s = src_words.astype(np.float64)
    t = tgt_words.astype(np.float64)
    lengths_ok = (s >= max(rule.min_words, 1)) & (t >= max(rule.min_words, 1))
    lengths_ok &= (s <= rule.max_words) & (t <= rule.max_words)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_ok = (s <= rule.ratio * t) & (t <= rule.ratio * s)
    return lengths_ok & ratio_ok


@dataclass
class CleanStats:
    """Pairs read by cleaning, and how many of them were kept."""

    read: int = 0
    kept: int = 0


def clean_stream(
    pairs: Iterable[tuple[str, str]],
    langs: tuple[str, str],
    rule: CleanSettings,
    counter: WordCounter,
    lowercase: bool,
    nfkc: bool,
    out: tuple[Path, Path],
    chunk: int = 50000,
    total: Optional[int] = None,
) -> CleanStats:
    """Normalize, clean and write pairs to two text files, chunk by chunk (memory stays flat).

    Words are counted on the normalized but not yet lowercased text, as the Moses cleaner sees cased text.
    """
    stats = CleanStats()
    iterator = iter(pairs)
    with (
        open(out[0], "w", encoding="utf-8", newline="\n") as f_src,
        open(out[1], "w", encoding="utf-8", newline="\n") as f_tgt,
        tqdm(total=total, unit="pairs", desc="clean", disable=None, mininterval=1.0) as bar,
    ):
        while True:
            block = list(itertools.islice(iterator, chunk))
            if not block:
                return stats
            src = [normalize_line(a, False, nfkc) for a, _ in block]
            tgt = [normalize_line(b, False, nfkc) for _, b in block]
            keep = keep_mask(counter(src, langs[0]), counter(tgt, langs[1]), rule)
            for index in np.flatnonzero(keep):
                f_src.write((src[index].lower() if lowercase else src[index]) + "\n")
                f_tgt.write((tgt[index].lower() if lowercase else tgt[index]) + "\n")
            stats.read += len(block)
            stats.kept += int(keep.sum())
            bar.update(len(block))


def every_nth(n: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) line indices: held out are lines whose 1-based number is divisible by `every`.

    This is fairseq's `awk 'NR % 23 == 0'` (0-based: i % 23 == 22), which gives IWSLT14 its 7,283 valid pairs.
    """
    held = np.zeros(n, dtype=bool)
    held[every - 1 :: every] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted sample of min(k, n) distinct indices out of n, a pure function of (n, k, seed)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# ---- locating input files ----------------------------------------------------------------------------------


@dataclass
class FileSource:
    """Files found by name in an input: a folder, a tar archive (any compression) or a single file.

    `spec` is a local path or a URL (fetched by toolkit.data.download.resolve_input, sha256-checked when
    given). Archive members are extracted on demand into `scratch`, in one streaming pass.
    """

    spec: str
    cache_dir: Path
    scratch: Path
    sha256: Optional[str] = None
    path: Path = field(init=False)
    kind: str = field(init=False)  # folder | tar | file
    _found: dict = field(init=False, default_factory=dict)  # name -> local path, so an archive is read once per name

    def __post_init__(self) -> None:
        local = Path(self.spec).expanduser()
        if local.is_dir():
            self.path, self.kind = local, "folder"
            return
        self.path = resolve_input(self.spec, self.cache_dir, self.sha256)
        try:
            is_tar = tarfile.is_tarfile(self.path)
        except ARCHIVE_ERRORS:
            is_tar = False
        self.kind = "tar" if is_tar else "file"

    def find(self, names: Sequence[str]) -> dict[str, Path]:
        """Local paths of those named files (matched by base name) that this input holds."""
        todo = [name for name in names if name not in self._found]
        if todo and self.kind == "folder":
            for name in todo:
                path = _find_in_folder(self.path, name)
                if path is not None:
                    self._found[name] = path
        elif todo and self.kind == "tar":
            self._found.update(self._extract(todo))
        elif todo and self.path.name in todo:
            self._found[self.path.name] = self.path
        return {name: self._found[name] for name in names if name in self._found}

    def require(self, names: Sequence[str], what: str) -> dict[str, Path]:
        """Like find, but any missing file is a DataError naming it."""
        found = self.find(names)
        missing = [name for name in names if name not in found]
        if missing:
            raise DataError(f"{what} {self.path} lacks {', '.join(missing)}")
        return {name: found[name] for name in names}

    def _extract(self, names: Sequence[str]) -> dict[str, Path]:
        wanted, found = set(names), {}
        self.scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="extract-", dir=self.scratch))
        try:
            with tarfile.open(self.path, mode="r|*") as archive:
                for member in archive:
                    name = Path(member.name).name
                    if member.isfile() and name in wanted and name not in found:
                        source = archive.extractfile(member)
                        assert source is not None
                        with source, open(folder / name, "wb") as out:
                            shutil.copyfileobj(source, out, 1 << 20)
                        found[name] = folder / name
        except ARCHIVE_ERRORS as error:
            if isinstance(error, OSError) and error.errno in OUTPUT_ERRNOS:
                raise  # writing the extracted file failed (full disk): the output's problem, named by its writer
            raise DataError(f"{self.path}: cannot read archive ({error})") from None
        return found

    def provenance(self) -> dict:
        """Where the input came from, with its sha256 (folders: none; each used file carries its own)."""
        out: dict = {"spec": self.spec, "kind": self.kind}
        if self.kind != "folder":
            out.update(path=str(self.path), bytes=self.path.stat().st_size, sha256=sha256_file(self.path))
        return out


def _find_in_folder(folder: Path, name: str) -> Optional[Path]:
    direct = folder / name
    if direct.is_file():
        return direct
    matches = sorted(path for path in folder.rglob(name) if path.is_file())
    return matches[0] if matches else None


def file_record(path: Path, name: Optional[str] = None) -> dict:
    """Provenance of one file read: name, bytes, sha256."""
    return {"name": name or path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write lines, newline-terminated, UTF-8."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
