"""What every CLI shares: one-line user errors with exit code 2, and the `config=NAME` argument."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

from toolkit.errors import USER_ERROR_EXIT, UserError


def run_cli(body: Callable[[list[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a CLI body; a UserError becomes `error: <message>` on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    try:
        return body(args)
    except UserError as error:
        from toolkit.distributed.rank_errors import report_error

        report_error(f"error: {error}")  # a rank of the local launcher: the launcher prints it once
        return USER_ERROR_EXIT


def pop_config_name(args: list[str]) -> Optional[str]:
    """Remove and return the value of `config=NAME` from args (None when absent)."""
    for i, arg in enumerate(args):
        if arg.startswith("config="):
            del args[i]
            return arg.split("=", 1)[1]
    return None
