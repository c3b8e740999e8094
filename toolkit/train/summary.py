"""The end-of-training report: what the run reached, on what budget, next to simple reference levels.

Built from the run's own `train_log.jsonl` (so a resumed run reports its whole history) and the final
evaluation: best validation metric and the step it was reached, the final metric with the evaluation
protocol, tokens trained on, the wall-clock of this invocation and, for language models, the n-gram
reference levels of the evaluated split (toolkit.eval.ngram_reference). Printed on stderr (stdout's last
line stays the final metrics' JSON) and written to `run_dir/summary.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from toolkit.data.atomic import atomic_write_bytes

SUMMARY_FILE = "summary.json"


def read_train_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a train_log.jsonl (an unreadable trailing line, from a killed run, is skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def run_summary(
    records: List[Dict[str, Any]],
    metric: str,
    final: Optional[Dict[str, Any]],
    wall_seconds: float,
    references: Dict[str, float],
) -> Dict[str, Any]:
    """The summary's fields (see the module docstring); `metric` is the task's validation metric."""
    valid = [r for r in records if r.get("kind") == "valid" and metric in r]
    train = [r for r in records if r.get("kind") == "train"]
    best = min(valid, key=lambda r: r[metric]) if valid else None
    summary: Dict[str, Any] = {
        "metric": metric,
        "steps": max((r["step"] for r in records if "step" in r), default=0),
        "best_valid": best[metric] if best else None,
        "best_valid_step": best["step"] if best else None,
        "tokens_seen": sum(int(r.get("tokens", 0)) for r in train),
        "wall_seconds": round(wall_seconds, 1),
    }
    if final:
        summary["final"] = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
    if references:
        summary["references"] = references
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """A few human lines for the end of a run."""
    metric = summary["metric"]
    lines = ["training summary"]
    if summary["best_valid"] is not None:
        lines.append(f"  best valid {metric}: {summary['best_valid']:.4f} at step {summary['best_valid_step']}")
    final = summary.get("final")
    if final and metric in final:
        protocol = ", ".join(f"{k}={final[k]}" for k in ("protocol", "window", "stride", "tokens") if k in final)
        lines.append(f"  {final.get('subset', 'final')} {metric}: {final[metric]:.4f} ({protocol})")
    lines.append(
        f"  steps: {summary['steps']}, tokens seen: {summary['tokens_seen']:,}, "
        f"wall-clock: {summary['wall_seconds']:.0f} s"
    )
    refs = summary.get("references")
    if refs:
        subset = final.get("subset", "test") if final else "test"
        levels = ", ".join(f"{name} {value:.2f}" for name, value in refs.items())
        lines.append(f"  count n-gram references on {subset} (fitted on train): {levels}")
    return "\n".join(lines)


def write_summary(run_dir: Path, summary: Dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())


def report_run(run_dir: Path, task: Any, final: Optional[Dict[str, Any]], wall_seconds: float) -> Dict[str, Any]:
    """Build, print (stderr) and write the summary of a finished run; returns it."""
    references = task.reference_levels(final["subset"]) if final and "subset" in final else {}
    records = read_train_log(run_dir / "train_log.jsonl")
    summary = run_summary(records, task.valid_metric, final, wall_seconds, references)
    print(format_summary(summary), file=sys.stderr, flush=True)
    write_summary(run_dir, summary)
    return summary
