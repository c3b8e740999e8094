"""SIGTERM/SIGINT handling: finish the current update, save, exit with a distinct code."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Optional


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
