"""tk-preprocess config=RECIPE key=value ...: turn a raw corpus into a binary dataset folder."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from toolkit.cli.common import pop_config_name, run_cli
from toolkit.config.cli_overrides import build_config
from toolkit.data.atomic import check_output_folder
from toolkit.data.recipes import load_all
from toolkit.errors import ConfigError, close_matches
from toolkit.registry import PREPROCESSORS


def _body(args: list[str]) -> int:
    load_all()
    if args and args[0] in ("-h", "--help"):
        print("usage: tk-preprocess config=RECIPE key=value ...")
        print("recipes: " + ", ".join(PREPROCESSORS.names()))
        return 0
    name = pop_config_name(args)
    if name is None:
        raise ConfigError(f"no config given: pass config=NAME, one of {', '.join(PREPROCESSORS.names())}")
    if name not in PREPROCESSORS:
        raise ConfigError(
            f"unknown preprocess config '{name}'{close_matches(name, PREPROCESSORS.names())}; "
            f"valid: {', '.join(PREPROCESSORS.names())}"
        )
    entry = PREPROCESSORS.get(name)
    cfg = build_config(entry.config_cls, args)
    if "destdir" in cfg:
        check_output_folder(cfg.destdir, "destdir")  # a file, under a file, read-only: before any work
    entry.builder(cfg)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
