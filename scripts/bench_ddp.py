"""Throughput scaling of data-parallel training from 1 to N processes on CPU (gloo).

Runs the same char-LM workload with 1 process (batch B) and N processes (batch B each, so N*B per update),
through `tk-train distributed.world_size=N` (torchrun), and reports the median tokens/s from the runs' logs.

  python scripts/bench_ddp.py [--data data-bin/text8_sample] [--procs 2] [--updates 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import CHAR_LM_WORKLOAD

WORKLOAD = [
    *CHAR_LM_WORKLOAD,
    "validate_interval=0",
    "save_interval=0",
    "final_subset=null",
    "tensorboard=false",
    "progress=plain",
    "log_interval=5",
    "device=cpu",
]


def tokens_per_second(procs: int, data: str, updates: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        args = [
            sys.executable,
            "-m",
            "toolkit.cli.train",
            "config=text8_char_tiny",
            f"data={data}",
            f"run_dir={run_dir}",
            f"max_update={updates}",
            f"threads={threads}",
            f"distributed.world_size={procs}",
            *WORKLOAD,
        ]
        subprocess.run(args, check=True, env=env, capture_output=True)
        rows = [json.loads(line) for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]
        speeds = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][1:]  # the first interval is warm-up
        return statistics.median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data-bin/text8_sample")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--updates", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    one = tokens_per_second(1, args.data, args.updates, threads=cores)
    many = tokens_per_second(args.procs, args.data, args.updates, threads=max(1, cores // args.procs))
    print(f"1 process ({cores} threads): {one:10.0f} tokens/s")
    print(
        f"{args.procs} processes ({max(1, cores // args.procs)} thread each): {many:10.0f} tokens/s "
        f"(global batch {args.procs}x larger)"
    )
    print(f"scaling: {many / one:.2f}x")


if __name__ == "__main__":
    main()
