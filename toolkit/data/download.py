"""Resolve a corpus input spec (local path, file:// or http(s) URL) to a local file, with an sha256 check.

URLs are fetched into a cache folder (file:// goes through the same code path, which is how the download
logic is tested offline): the bytes stream to a temporary name under a tqdm progress bar and are renamed into
place only once complete and verified, so the cache never holds a partial or corrupt file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Optional

from tqdm import tqdm

from toolkit.errors import DataError

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http", "https", "file")
CHUNK_BYTES = 1 << 20  # 1 MiB reads: few Python iterations even for a 100 MB corpus
TIMEOUT_S = 60.0


def sha256_file(path: Path) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(name: str, actual: str, expected: Optional[str]) -> None:
    if expected is not None and actual != expected.lower():
        raise DataError(f"{name}: sha256 mismatch: expected {expected.lower()}, got {actual}")


def cache_path(url: str, cache_dir: Path) -> Path:
    """Where a URL is cached: a folder per URL (so equal file names from two hosts do not collide)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return cache_dir / key / name


def _stream(response: BinaryIO, out: BinaryIO, total: Optional[int], label: str) -> str:
    """Copy response to out under a progress bar (shown on a tty only); return the sha256 of the bytes."""
    digest = hashlib.sha256()
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None) as bar:
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def recorded_digest_path(dest: Path) -> Path:
    """Where the sha256 of a cached download is recorded when it is fetched (NAME.sha256 beside it)."""
    return dest.with_name(dest.name + ".sha256")


def _record_digest(dest: Path, digest: str) -> None:
    from toolkit.data.atomic import atomic_write_bytes

    atomic_write_bytes(recorded_digest_path(dest), (digest + "\n").encode())


def _cached_copy(url: str, dest: Path, sha256: Optional[str]) -> Optional[Path]:
    """The cached file of `url` when it can be used: it matches `sha256`, or else the digest recorded when it
    was downloaded. A cached copy changed since its download is a DataError (it is never used unchecked)."""
    if not dest.is_file():
        return None
    actual = sha256_file(dest)
    if sha256 is not None:
        if actual == sha256.lower():
            logger.info("using cached %s for %s (sha256 verified)", dest, url)
            return dest
        logger.warning("cached %s does not match sha256=%s (it has %s): downloading again", dest, sha256, actual)
        return None
    record = recorded_digest_path(dest)
    recorded = record.read_text().strip() if record.is_file() else None
    if recorded is None:
        logger.warning(
            "using cached %s for %s, UNVERIFIED: no sha256 given and none recorded at download (its sha256 is %s)",
            dest,
            url,
            actual,
        )
    elif actual != recorded:
        raise DataError(
            f"cached {dest} changed since it was downloaded from {url}: sha256 {actual}, recorded "
            f"{recorded} in {record}; delete both to download it again"
        )
    else:
        logger.info("using cached %s for %s (sha256 as recorded at download)", dest, url)
    return dest


def download(url: str, dest: Path, sha256: Optional[str] = None) -> Path:
    """Fetch url to dest via a temporary name; verify sha256 (if given) before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    actual = _stream(response, out, total, dest.name)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                raise DataError(f"cannot download {url}: {reason}") from None
            out.flush()
            os.fsync(out.fileno())
        _check_digest(f"{url} (downloaded to {dest})", actual, sha256)
        _record_digest(dest, actual)  # a later use of the cached copy is checked against it
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial or bad download never stays in the cache
        raise
    logger.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, dest.stat().st_size, actual)
    if sha256 is None:
        logger.warning(
            "%s is UNVERIFIED: no sha256 was given to check the download against (pass sha256=%s "
            "if that is the published digest)",
            url,
            actual,
        )
    return dest


def resolve_input(spec: str, cache_dir: Path, sha256: Optional[str] = None) -> Path:
    """Turn an input spec into an existing local file.

    - a local path: used in place; it must exist and be a file.
    - an http(s):// or file:// URL: fetched into `cache_dir` (its sha256 recorded beside it), and reused when
      already there and matching `sha256`, or without `sha256` the recorded digest. A download without
      `sha256` is logged as unverified.
    With `sha256`, the file's digest must match; a mismatch raises DataError naming the file and both
    digests (a downloaded file is removed, a local file is left alone).
    """
    scheme = urllib.parse.urlparse(spec).scheme.lower()
    if scheme in URL_SCHEMES:
        dest = cache_path(spec, Path(cache_dir).expanduser())
        return _cached_copy(spec, dest, sha256) or download(spec, dest, sha256)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if not path.is_file():
        raise DataError(f"input {path} is not a file")
    if sha256 is not None:
        _check_digest(str(path), sha256_file(path), sha256)
    return path
