"""User-facing errors: each becomes one line on stderr and exit code 2 in the CLIs."""

from __future__ import annotations

import difflib
from typing import Iterable

USER_ERROR_EXIT = 2  # bad input from the user (config, files)
INTERRUPTED_EXIT = 3  # SIGTERM/SIGINT: state saved, run can resume
DIVERGED_EXIT = 4  # too many non-finite losses in a row
DISTRIBUTED_EXIT = 5  # a collective failed: another rank died or timed out


class UserError(Exception):
    """An error caused by the user's input; the message is a single readable line."""


class ConfigError(UserError):
    """A bad configuration value, key or preset."""


class DataError(UserError):
    """A missing, truncated or malformed data file."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' for the nearest choices, or '' when none is close."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
