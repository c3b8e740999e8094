"""Same-budget BASE vs MAE-7 vs NoBCD on the shipped IWSLT14 sample.

Trains each tiny preset for the same number of updates with the same seed, then reports the test BLEU
(beam 5, tokenized lowercased, the preset's protocol), the best valid NLL, and for the MAE models the gate
entropy: the mean per-token entropy over the last 10 training logs (averaged over layers) and the entropy
of the mean expert usage on the valid set (`tk-analyze gates`). log(8) = 2.079 is a uniform gate.

    tk-preprocess config=iwslt14_sample destdir=data-bin/iwslt14_sample
    python scripts/compare_mae_tiny.py [--updates 1500] [--out runs/mae_compare] [--threads 1]

Prints a Markdown table (docs/mae.md has the measured one) and writes it to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

PRESETS = ["base_iwslt14_tiny", "nobcd_mae7_iwslt14_tiny", "mae7_iwslt14_tiny"]


def last_json(stdout: str) -> Dict[str, Any]:
    """The last line of a CLI's output that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in:\n{stdout[-2000:]}")


def run(cmd: List[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def mean_gate_entropy(log_file: Path, last: int = 10) -> float:
    """Mean over the last `last` training records and all MAE modules of the per-token gate entropy."""
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"][-last:]
    values = [v for r in train for k, v in r.items() if k.startswith("mae/") and k.endswith("/entropy")]
    return sum(values) / len(values) if values else float("nan")


def compare(updates: int, out: Path, data: str, threads: int, seed: int) -> List[Dict[str, Any]]:
    rows = []
    for preset in PRESETS:
        run_dir = out / preset
        result = last_json(
            run(
                [
                    "tk-train",
                    f"config={preset}",
                    f"run_dir={run_dir}",
                    f"data={data}",
                    f"max_update={updates}",
                    f"seed={seed}",
                ],
                threads,
            )
        )
        row = {"preset": preset, "bleu": result["bleu"], "test_nll": result["nll"]}
        valid = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        row["best_valid_nll"] = min(r["nll"] for r in valid if r["kind"] == "valid")
        if "mae" in preset:
            row["gate_entropy"] = mean_gate_entropy(run_dir / "train_log.jsonl")
            gates = json.loads(
                Path(
                    last_json(
                        run(
                            [
                                "tk-analyze",
                                "gates",
                                f"checkpoint={run_dir}/checkpoint_best.pt",
                                "subset=valid",
                            ],
                            threads,
                        )
                    )["json"]
                ).read_text()
            )
            row["usage_entropy"] = sum(gates["usage_entropy"]) / len(gates["usage_entropy"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: List[Dict[str, Any]], updates: int) -> str:
    fmt = lambda row, key: f"{row[key]:.3f}" if key in row else "-"  # noqa: E731
    lines = [
        f"| preset ({updates} updates) | test BLEU | test NLL | best valid NLL | gate entropy (train) | usage entropy (valid) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['preset']}` | {row['bleu']:.2f} | {row['test_nll']:.3f} | {row['best_valid_nll']:.3f} "
            f"| {fmt(row, 'gate_entropy')} | {fmt(row, 'usage_entropy')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("runs/mae_compare"))
    parser.add_argument("--data", default="data-bin/iwslt14_sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = compare(args.updates, args.out, args.data, args.threads, args.seed)
    text = table(rows, args.updates)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
