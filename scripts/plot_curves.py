#!/usr/bin/env python
"""Learning curves (bpc against update) of one or more runs, from each run folder's train_log.jsonl.

The trainer writes one JSON object per log line ({"kind": "train" | "valid", "step": N, "bpc": ...}); this
draws the training bpc (thin) and the validation bpc (markers) of every run on one axis and, when a run
logged auxiliary terms, their weights over the updates on a second panel. `--valid-only` overlays only the
validation curves; `--references` adds the n-gram reference levels a run's summary.json records (dashed).

    python scripts/plot_curves.py runs/t64_tiny_text8 runs/t64_tiny_text8_noaux --out docs/t64_curves.png
    python scripts/plot_curves.py runs/a runs/b --valid-only --references --out curves.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

from toolkit.data.atomic import atomic_write_bytes  # noqa: E402


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_rows(run_dir: Path) -> List[Dict]:
    path = run_dir / "train_log.jsonl"
    if not path.is_file():
        fail(f"{path} is missing (not a tk-train run folder?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            fail(f"{path}:{number}: not a JSON line")
    return rows


def read_references(run_dirs: List[Path]) -> Dict[str, float]:
    """The n-gram levels of the first run whose summary.json has them (empty when none has)."""
    for run_dir in run_dirs:
        path = run_dir / "summary.json"
        if path.is_file():
            try:
                references = json.loads(path.read_text()).get("references")
            except json.JSONDecodeError:
                fail(f"{path}: not valid JSON")
            if references:
                return {str(k): float(v) for k, v in references.items()}
    return {}


def plot(
    runs: Dict[str, List[Dict]],
    metric: str,
    title: str,
    valid_only: bool = False,
    references: Optional[Dict[str, float]] = None,
) -> bytes:
    with_weights = not valid_only and any(k.startswith("weight/") for rows in runs.values() for r in rows for k in r)
    fig, axes = plt.subplots(2 if with_weights else 1, 1, figsize=(8, 7 if with_weights else 4.5), squeeze=False)
    ax = axes[0][0]
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i}"
        train = [(r["step"], r[metric]) for r in rows if r["kind"] == "train" and metric in r]
        valid = [(r["step"], r[metric]) for r in rows if r["kind"] == "valid" and metric in r]
        if train and not valid_only:
            ax.plot(*zip(*train), color=color, alpha=0.45, linewidth=1, label=f"{label} (train)")
        if valid:
            ax.plot(*zip(*valid), color=color, marker="o", linewidth=2, label=f"{label} (valid)")
    for j, (name, level) in enumerate((references or {}).items()):
        ax.axhline(level, color="0.4", linestyle=(0, (4, 2 + 2 * j)), linewidth=1, label=f"{name} ({level:.2f})")
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
    parser.add_argument("--valid-only", action="store_true", help="draw only the validation curves")
    parser.add_argument(
        "--references", action="store_true", help="draw the n-gram reference levels from the runs' summary.json"
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        fail(f"{len(labels)} labels for {len(args.runs)} runs")
    runs = {label: read_rows(run) for label, run in zip(labels, args.runs)}
    if not any(
        r.get("kind") == ("valid" if args.valid_only else r.get("kind")) and args.metric in r
        for rows in runs.values()
        for r in rows
    ):
        fail(f"no run logged '{args.metric}'{' in validation' if args.valid_only else ''}")
    references = read_references(args.runs) if args.references else {}
    atomic_write_bytes(args.out, plot(runs, args.metric, args.title, args.valid_only, references))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
