"""tk-analyze ANALYSIS key=value ...: analyses of trained checkpoints, one subcommand each.

  spans checkpoint=PATH [output=DIR]   learned attention span per layer and head of a model with relative
                                       attention (adaptive_span): OUTPUT/spans.png, spans.json
  gates checkpoint=PATH [subset=valid] [output=DIR]
                                       mean MAE gate per layer and expert: OUTPUT/gates.png, gates.json

Each analysis lives in its own module with a `run(args: list[str]) -> int`; add one to ANALYSES.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, Optional, Sequence, Tuple

from toolkit.cli.common import run_cli
from toolkit.errors import ConfigError, close_matches

# name -> (module with run(args), one-line description)
ANALYSES: Dict[str, Tuple[str, str]] = {
    "spans": ("toolkit.eval.span_analysis", "learned attention spans per layer and head (PNG + JSON)"),
    "gates": ("toolkit.eval.gate_analysis", "mean MAE gate per layer and expert over a subset (PNG + JSON)"),
}


def usage() -> str:
    lines = [__doc__.split("\n\n")[0], "", "analyses:"]
    lines += [f"  {name:8s} {description}" for name, (_, description) in sorted(ANALYSES.items())]
    return "\n".join(lines)


def _body(args: list[str]) -> int:
    if not args:
        raise ConfigError(
            f"no analysis given: tk-analyze ANALYSIS key=value ... (valid: {', '.join(sorted(ANALYSES))})"
        )
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in ANALYSES:
        raise ConfigError(
            f"unknown analysis '{name}'{close_matches(name, ANALYSES)}; valid: {', '.join(sorted(ANALYSES))}"
        )
    if any(a in ("-h", "--help") for a in rest):
        module = importlib.import_module(ANALYSES[name][0])
        print(module.__doc__)
        return 0
    return importlib.import_module(ANALYSES[name][0]).run(rest)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
