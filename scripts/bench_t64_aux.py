#!/usr/bin/env python
"""Training throughput of a T64-style preset with all auxiliary losses vs without, in one process.

Both models are built from their presets (default t64_tiny_text8 and t64_tiny_text8_noaux) and trained with
the toolkit's criterion (the preset's aux_weights at update `--step`; 0 = every auxiliary loss on, the most
expensive point of a run) and Adam on the same random windows. Steps alternate between the two models so
machine load hits both alike; the median step time after warm-up is reported, with the overhead of the
auxiliary heads (as the ratio of the medians and as the median of the per-round ratios).

    python scripts/bench_t64_aux.py                      # 2 threads, 30 timed steps each
    python scripts/bench_t64_aux.py --threads 1 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Dict, List

import torch

from toolkit.config.compose import compose_train_config
from toolkit.criterions.cross_entropy import CrossEntropyCriterion
from toolkit.aux_weights import AuxWeights


class NoData:
    """Stands in for the task: the vocabulary size comes from the preset."""

    pad_idx = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size


def build(preset: str, overrides: List[str]) -> Dict[str, Any]:
    cfg = compose_train_config(preset, ["data=null", *overrides])
    task = NoData(cfg.task.vocab_size)
    torch.manual_seed(cfg.seed)
    from toolkit.registry import MODELS

    model = MODELS.get(cfg.model.name).builder.build(cfg.model, task).train()
    criterion = CrossEntropyCriterion(cfg.criterion, task, AuxWeights(cfg.aux_weights, cfg.max_update))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return {"cfg": cfg, "model": model, "criterion": criterion, "optimizer": optimizer, "times": []}


def train_step(run: Dict[str, Any], batch: Dict[str, Any], step: int) -> float:
    start = time.perf_counter()
    loss, _, _ = run["criterion"](run["model"], batch, step)
    loss.backward()
    run["optimizer"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aux", default="t64_tiny_text8", help="preset with the auxiliary losses")
    parser.add_argument("--noaux", default="t64_tiny_text8_noaux", help="the same preset without them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    parser.add_argument("--step", type=int, default=0, help="training update whose aux weights apply")
    parser.add_argument("overrides", nargs="*", help="key=value for both presets (e.g. model.n_layers=12)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {"aux": build(args.aux, args.overrides), "noaux": build(args.noaux, args.overrides)}
    cfg = runs["aux"]["cfg"]
    b, t, v = cfg.task.batch_size, cfg.task.tokens_per_sample, cfg.task.vocab_size
    generator = torch.Generator().manual_seed(0)
    for i in range(args.warmup + args.steps):
        chunk = torch.randint(0, v, (b, t + 1), generator=generator)
        batch = {"net_input": {"tokens": chunk[:, :-1]}, "target": chunk[:, 1:], "ntokens": b * t}
        order = ("aux", "noaux") if i % 2 == 0 else ("noaux", "aux")  # alternate who goes first
        for name in order:
            elapsed = train_step(runs[name], batch, args.step)
            if i >= args.warmup:
                runs[name]["times"].append(elapsed)
    logs = runs["aux"]["criterion"](runs["aux"]["model"], batch, args.step)[2]
    terms = [key.split("/", 1)[1] for key, weight in logs.items() if key.startswith("weight/") and weight]
    print(f"presets {args.aux} vs {args.noaux}; {b} x {t} tokens per step, {args.threads} threads, update {args.step}")
    print(f"active auxiliary terms: {', '.join(terms) or 'none'}")
    medians = {}
    for name, run in runs.items():
        medians[name] = statistics.median(run["times"])
        params = sum(p.numel() for p in run["model"].parameters())
        print(f"{name:>6}: {medians[name] * 1000:8.1f} ms/step  {b * t / medians[name]:9.0f} tokens/s  ({params:,} parameters)")
    ratio = medians["aux"] / medians["noaux"]
    # the two steps of a round ran back to back, so their ratio is less sensitive to load drifting over the run
    paired = statistics.median(a / b for a, b in zip(runs["aux"]["times"], runs["noaux"]["times"]))
    print(f"aux / noaux: ratio of medians {ratio:.3f} ({(ratio - 1) * 100:+.1f}%), "
          f"median of per-round ratios {paired:.3f} ({(paired - 1) * 100:+.1f}%); budget +15%: "
          f"{'ok' if max(ratio, paired) <= 1.15 else 'OVER'}")


if __name__ == "__main__":
    main()
