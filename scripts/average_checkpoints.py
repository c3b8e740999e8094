"""Average the model weights of the last N interval checkpoints of a run (as fairseq's average_checkpoints).

  python scripts/average_checkpoints.py RUN_DIR --last 5 --output RUN_DIR/checkpoint_avg5.pt

A run with `average_last_n=N` does this itself at the end of training (checkpoint_avg.pt). The output is a
checkpoint that tk-eval and tk-translate read (the newest checkpoint's config and position, averaged model
weights), written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.errors import USER_ERROR_EXIT, UserError
from toolkit.train.averaging import average_checkpoints
from toolkit.train.checkpoint import interval_checkpoints, save_checkpoint


def main() -> int:
    try:
        return _main()
    except UserError as error:  # e.g. a checkpoint the safe loader refuses
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--last", type=int, default=5, help="average this many newest checkpoint_<step>.pt")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    paths = interval_checkpoints(args.run_dir)[-args.last :]
    if len(paths) < args.last:
        print(
            f"error: {args.run_dir} has {len(paths)} interval checkpoints, fewer than --last {args.last} "
            "(train with keep_interval_checkpoints=N)",
            file=sys.stderr,
        )
        return 2
    output = args.output or args.run_dir / f"checkpoint_avg{args.last}.pt"
    save_checkpoint(average_checkpoints(paths), output)
    print(f"averaged {', '.join(p.name for p in paths)} -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
