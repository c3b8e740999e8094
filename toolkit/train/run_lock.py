"""An exclusive lock on a run folder, so that two trainers never write the same run at once.

The lock is a POSIX record lock (`fcntl.lockf`) on `RUN_DIR/.tk-train.lock`, held for the whole run and
released by the kernel when the process dies (even by SIGKILL), so a stale lock never blocks a later run.
The file holds the holder's host and pid, for the message of the one refused; it is removed when the run
ends. On a local disk this is exact. On NFS (v4, or v3 with a lock manager) POSIX locks are seen by every
client, so two machines sharing a run folder are also kept apart; a filesystem without locking support
(some FUSE or Lustre mounts without `-o flock`) cannot lock: the run then goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from toolkit.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".tk-train.lock"


class RunFolderBusy(UserError):
    """Another trainer holds the run folder."""


class RunFolderLock:
    """`acquire()` takes the lock (RunFolderBusy when another process holds it); `release()` gives it back."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: Optional[int] = None
        self.created_dir = False

    def acquire(self) -> None:
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"run_dir={self.run_dir}: cannot create the folder ({error.strerror})") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                self._remove_dir_if_created()
                raise UserError(f"run_dir={self.run_dir}: cannot write in the folder ({error.strerror})") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
                os.close(fd)
                if error.errno in (errno.EACCES, errno.EAGAIN):
                    self._remove_dir_if_created()
                    raise RunFolderBusy(
                        f"run_dir={self.run_dir} is in use by another tk-train ({holder}); "
                        "wait for it to finish or choose another run_dir"
                    ) from None
                log.warning(
                    "cannot lock %s (%s): two trainers on this run folder would not be kept apart",
                    self.path,
                    error.strerror,
                )
                return
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the previous holder removed the file between our open and lock: try again
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            self._remove_dir_if_created()
            return
        # removed while still held: a process waiting on the old file sees it gone and opens a new one
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        self._remove_dir_if_created()

    def _remove_dir_if_created(self) -> None:
        """A run refused before writing anything leaves no empty folder behind."""
        if self.created_dir:
            try:
                self.run_dir.rmdir()
            except OSError:
                pass  # not empty: the run wrote its files

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
