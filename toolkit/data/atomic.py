"""Atomic outputs: a dataset folder or file appears whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from toolkit.errors import ConfigError, DataError

# errors of a write that the output's location causes (full disk, quota, read-only file system)
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output_folder(path: str | os.PathLike, key: str) -> Path:
    """Check, before any work, that `path` is a folder this process can write in, or can be created as one.

    Raises a one-line ConfigError naming `key` when the path is a file, lies under a file, or its nearest
    existing folder refuses a new file. The probe (an unnamed temporary file) leaves nothing behind, and no
    folder is created. Returns the nearest existing folder.
    """
    target = Path(path).expanduser()
    current = target
    while not current.exists():
        if current.is_symlink():
            raise ConfigError(f"{key}={path}: {current} is a link to the missing {os.readlink(current)}")
        if current.parent == current:
            break
        current = current.parent
    if not current.is_dir():
        where = "is a file" if current == target else f"is under {current}, which is a file"
        raise ConfigError(f"{key}={path}: {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=current):
            pass
    except OSError as error:
        raise ConfigError(f"{key}={path}: cannot write in {current} ({error.strerror or error})") from None
    return current


def output_error(dest: Path, error: OSError) -> DataError:
    """A one-line DataError naming the output for a write that failed because of where it goes."""
    return DataError(f"cannot write {dest}: {error.strerror or error}")


@contextlib.contextmanager
def atomic_output_dir(destdir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `destdir`; on success it is renamed to `destdir`.

    On any error the temporary folder is removed, so no partial dataset is left behind. An existing,
    non-empty `destdir` is refused unless `overwrite` (and then replaced only once the new one is whole).
    """
    dest = Path(destdir).expanduser()
    if dest.is_symlink():  # the link stays; the folder it points to is what gets written (or replaced)
        target = dest.resolve()
        if not target.is_dir():
            what = "a file" if target.exists() else "missing"
            raise DataError(f"{dest} is a link to {target}, which is {what}; give the folder itself as destdir")
        dest = target
    check_output_folder(dest, "destdir")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise DataError(f"{dest} already exists and is not empty (pass overwrite=true to replace it)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as error:
        raise output_error(dest, error) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the user's usual permissions
    try:
        yield tmp
        for file in tmp.iterdir():
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
        fsync_dir(dest.parent)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno in OUTPUT_ERRNOS:  # a full disk is the output's problem, whatever was being read
            raise output_error(dest, error) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file through a temporary name, fsync it, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
