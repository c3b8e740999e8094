"""SIGTERM/SIGINT handling: finish the current update, save, exit with a distinct code."""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator, Optional


class StopRequest:
    """Set by SIGTERM/SIGINT; the trainer checks it at update boundaries."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signal = signum

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    @property
    def requested(self) -> bool:
        return self.signal is not None


class Interrupted(BaseException):
    """SIGTERM/SIGINT outside the update loop (start-up, final evaluation); like KeyboardInterrupt, not an
    Exception, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, during: str = "start-up") -> None:
        super().__init__(signum, during)
        self.signum, self.during = signum, during

    def message(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} during {self.during}"


@contextlib.contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted (instead of a KeyboardInterrupt traceback or dying with 143).

    The trainer's StopRequest replaces this inside the update loop and puts it back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
