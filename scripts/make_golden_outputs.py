"""Regenerate the golden-output fixtures of tests/unit/test_golden_outputs.py (tests/fixtures/golden/*.golden).

The fixtures lock the numerics of every model on fixed weights and inputs: the test fails whenever a change
moves any output by a single bit. Run this ONLY when an output change is intended and understood (say so in
the commit message), never to make a failing golden test pass. It refuses to overwrite existing fixtures
unless --overwrite is given; --check compares without writing.

    python scripts/make_golden_outputs.py            # write missing fixtures
    python scripts/make_golden_outputs.py --check    # report which cases differ from their fixture
    python scripts/make_golden_outputs.py --overwrite --cases lm_plain   # re-record one case, knowingly

Runs single-threaded on CPU, as the test does (results on CPU can depend on the thread count).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.unit.golden_cases import CASES, CASES_BY_NAME, FIXTURE_DIR, differences, fixture_path, make_fixture, replay  # noqa: E402

SEED = 1234


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing fixtures (changes the reference!)")
    parser.add_argument("--check", action="store_true", help="compare with the stored fixtures, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    unknown = [name for name in args.cases or [] if name not in CASES_BY_NAME]
    if unknown:
        print(f"error: unknown case '{unknown[0]}'; valid: {', '.join(CASES_BY_NAME)}", file=sys.stderr)
        return 2
    cases = [CASES_BY_NAME[name] for name in args.cases] if args.cases else CASES
    if args.check:
        failed = 0
        for case in cases:
            path = fixture_path(case.name)
            if not path.exists():
                print(f"{case.name}: no fixture")
                failed += 1
                continue
            problems = differences(
                torch.load(path, weights_only=True)["outputs"], replay(torch.load(path, weights_only=True))
            )
            failed += bool(problems)
            print(f"{case.name}: {'ok' if not problems else problems[0]}")
        return 1 if failed else 0
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    for case in cases:
        path = fixture_path(case.name)
        if path.exists() and not args.overwrite:
            print(f"{case.name}: kept {path} (use --overwrite to re-record)")
            continue
        fixture = make_fixture(case, SEED)
        tmp = path.with_suffix(".tmp")
        torch.save(fixture, tmp)
        tmp.replace(path)
        print(f"{case.name}: wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
