"""Checks on the files a command will write, made before its work starts (so a bad path fails in a second)."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import ConfigError


def check_output_file(path: str, key: str) -> None:
    """ConfigError unless `path` can be created or replaced: its folder exists and is writable, it is no folder."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ConfigError(f"{key}={path}: is a folder, not a file")
    if not folder.is_dir():
        raise ConfigError(f"{key}={path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: folder {folder} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise ConfigError(f"{key}={path}: file is not writable")
