"""The `error: ...` lines of ranks started by the local launcher, printed once by the launcher.

Every rank of a run refused for bad input (a checkpoint that cannot be resumed, say) finds the same problem; the
launcher (toolkit.distributed.torchrun) gives each rank a folder to leave its line in and prints each distinct
line once, after torchrun has finished.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

FOLDER_ENV = "TOOLKIT_RANK_ERRORS"


def report_error(line: str) -> None:
    """Print `line` on stderr, or leave it for the launcher when this is one of its ranks."""
    folder = os.environ.get(FOLDER_ENV)
    if folder and "RANK" in os.environ:
        try:
            with open(Path(folder) / f"rank{int(os.environ['RANK']):05d}", "a") as handle:
                handle.write(line + "\n")
            return
        except OSError:
            pass  # the launcher's folder is gone: say it here
    print(line, file=sys.stderr, flush=True)


def distinct_errors(folder: Path) -> List[str]:
    """The lines the ranks left in `folder`, each once, in rank order."""
    lines: List[str] = []
    for path in sorted(folder.glob("rank*")):
        for line in path.read_text(errors="replace").splitlines():
            if line not in lines:
                lines.append(line)
    return lines
