#!/usr/bin/env python
"""Learning curves (bpc against update) of one or more runs, from each run folder's train_log.jsonl.

The trainer writes one JSON object per log line ({"kind": "train" | "valid", "step": N, "bpc": ...}); this
draws the training bpc (thin) and the validation bpc (markers) of every run on one axis and, when a run
logged auxiliary terms, their weights over the updates on a second panel.

    python scripts/plot_curves.py runs/t64_tiny_text8 runs/t64_tiny_text8_noaux --out docs/t64_curves.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

from toolkit.data.atomic import atomic_write_bytes  # noqa: E402


def read_rows(run_dir: Path) -> List[Dict]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} is missing (not a tk-train run folder?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            sys.exit(f"error: {path}:{number}: not a JSON line")
    return rows


def plot(runs: Dict[str, List[Dict]], metric: str, title: str) -> bytes:
    with_weights = any(k.startswith("weight/") for rows in runs.values() for r in rows for k in r)
    fig, axes = plt.subplots(2 if with_weights else 1, 1, figsize=(8, 7 if with_weights else 4.5), squeeze=False)
    ax = axes[0][0]
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i}"
        train = [(r["step"], r[metric]) for r in rows if r["kind"] == "train" and metric in r]
        valid = [(r["step"], r[metric]) for r in rows if r["kind"] == "valid" and metric in r]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.45, linewidth=1, label=f"{label} (train)")
        if valid:
            ax.plot(*zip(*valid), color=color, marker="o", linewidth=2, label=f"{label} (valid)")
    ax.set_xlabel("update")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if with_weights:
        wax = axes[1][0]
        for label, rows in runs.items():
            names = sorted({k for r in rows for k in r if k.startswith("weight/")})
            last_step = max(r["step"] for r in rows)
            for name in names:
                # a term is logged only while active: after its last row its weight is 0
                points = [(r["step"], r[name]) for r in rows if r["kind"] == "train" and name in r]
                if points and points[-1][0] < last_step:
                    points.append((points[-1][0], 0.0))
                    points.append((last_step, 0.0))
                if points:
                    wax.plot(*zip(*points), linewidth=1, label=f"{label}: {name[7:]}")
        wax.set_xlabel("update")
        wax.set_ylabel("auxiliary weight")
        wax.grid(alpha=0.3)
        wax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with train_log.jsonl)")
    parser.add_argument("--labels", nargs="*", help="one label per run (default: the folder names)")
    parser.add_argument("--metric", default="bpc")
    parser.add_argument("--title", default="learning curves")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        sys.exit(f"error: {len(labels)} labels for {len(args.runs)} runs")
    runs = {label: read_rows(run) for label, run in zip(labels, args.runs)}
    atomic_write_bytes(args.out, plot(runs, args.metric, args.title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
