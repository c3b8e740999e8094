"""torchrun, as the local launcher runs it: the exit code of the rank that failed first, and no failure report.

Plain torchrun turns any rank's non-zero exit into its own exit code 1 and prints a traceback and a failure
table; the rank has already printed its one `error: ...` line. Here a failed rank's exit code (2 for bad input,
3 when stopped by a signal, 4 when diverged, ...) becomes this process's, and torchrun's report is left out.
The ranks' `error: ...` lines (the same on every rank, as a rule) are printed once each
(toolkit.distributed.rank_errors).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from toolkit.distributed.rank_errors import FOLDER_ENV, distinct_errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    # torchrun's own failure log lines repeat what the rank printed
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    folder = Path(tempfile.mkdtemp(prefix="tk-rank-errors-"))
    os.environ[FOLDER_ENV] = str(folder)  # the ranks inherit it
    try:
        run(parse_args(list(sys.argv[1:] if argv is None else argv)))
    except ChildFailedError as failed:
        _, first = failed.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # killed by signal N: 128 + N
    finally:
        for line in distinct_errors(folder):
            print(line, file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
