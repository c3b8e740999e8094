"""Progress reporting: a tqdm bar on a terminal, plain `key=value` lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from tqdm import tqdm


def format_metrics(metrics: Dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


class Progress:
    """Shows training progress; `mode` is 'auto' (bar when stderr is a terminal), 'bar' or 'plain'."""

    def __init__(self, total: int, initial: int = 0, mode: str = "auto", enabled: bool = True):
        self.enabled = enabled
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar: Optional[tqdm] = (
            tqdm(total=total, initial=initial, unit="upd", dynamic_ncols=True, file=sys.stderr)
            if use_bar and enabled
            else None
        )

    def update(self, step: int, metrics: Optional[Dict[str, Any]] = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if metrics:
                self.bar.set_postfix_str(format_metrics(metrics), refresh=False)
        elif metrics:
            print(f"step={step} {format_metrics(metrics)}", flush=True)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
