#!/usr/bin/env python
"""Training throughput of a T64-style preset with all auxiliary losses vs without, in one process.

Both runs are the toolkit's own trainer step (Trainer.train_step: criterion with the preset's aux_weights,
freezing of switched-off heads, gradient scaling, lr schedule, optimizer) built from their presets (default
t64_tiny_text8 and t64_tiny_text8_noaux) on the shipped text8 sample. The update counter is held at `--step`
(0 = every auxiliary loss on, the most expensive point of a run), so the same terms are active at every timed
step. Steps alternate between the two runs so machine load hits both alike; the median step time after
warm-up is reported, with the overhead of the auxiliary heads (as the ratio of the medians and as the median
of the per-round ratios).

    python scripts/bench_t64_aux.py                      # 2 threads, 30 timed steps each
    python scripts/bench_t64_aux.py --threads 1 --steps 50
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, List

from bench_common import alternate, median, paired_ratio, print_result, ratio_of_medians, set_threads

from toolkit.aux_weights import active_aux_terms
from toolkit.config.compose import compose_train_config
from toolkit.train.run import single_process_trainer
from toolkit.train.trainer import Trainer


def build(preset: str, data: str, overrides: List[str], run_dir: Path) -> Trainer:
    cfg = compose_train_config(preset, [f"data={data}", "tensorboard=false", *overrides])
    return single_process_trainer(cfg, run_dir)


def step_at(trainer: Trainer, update: int) -> Callable[[], None]:
    """One trainer step with the update counter held at `update` (its aux weights and lr apply)."""

    def step() -> None:
        trainer.step = update
        trainer.train_step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aux", default="t64_tiny_text8", help="preset with the auxiliary losses")
    parser.add_argument("--noaux", default="t64_tiny_text8_noaux", help="the same preset without them")
    parser.add_argument("--data", default="data-bin/text8_sample", help="dataset folder (tk-preprocess)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    parser.add_argument("--step", type=int, default=0, help="training update whose aux weights apply")
    parser.add_argument("overrides", nargs="*", help="key=value for both presets (e.g. model.n_layers=12)")
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            name: build(getattr(args, name), args.data, args.overrides, Path(tmp) / name) for name in ("aux", "noaux")
        }
        times = alternate({name: step_at(t, args.step) for name, t in trainers.items()}, args.steps, 1, args.warmup)
    aux = trainers["aux"]
    b, t = aux.cfg.task.batch_size, aux.cfg.task.tokens_per_sample
    terms = sorted(active_aux_terms(aux.model.aux_term_names(), aux.criterion.aux_weights, args.step))
    print(f"presets {args.aux} vs {args.noaux}; {b} x {t} tokens per step, {args.threads} threads, update {args.step}")
    print(f"active auxiliary terms: {', '.join(terms) or 'none'}")
    medians = {}
    for name, trainer in trainers.items():
        medians[name] = median(times[name])
        params = sum(p.numel() for p in trainer.model.parameters())
        print(
            f"{name:>6}: {medians[name] * 1000:8.1f} ms/step  {b * t / medians[name]:9.0f} tokens/s  ({params:,} parameters)"
        )
    ratio = ratio_of_medians(times, "aux", "noaux")
    # the two steps of a round ran back to back, so their ratio is less sensitive to load drifting over the run
    paired = paired_ratio(times, "aux", "noaux")
    print(
        f"aux / noaux: ratio of medians {ratio:.3f} ({(ratio - 1) * 100:+.1f}%), "
        f"median of per-round ratios {paired:.3f} ({(paired - 1) * 100:+.1f}%); budget +15%: "
        f"{'ok' if max(ratio, paired) <= 1.15 else 'OVER'}"
    )
    print_result(
        "t64_aux",
        threads=args.threads,
        update=args.step,
        active_terms=terms,
        aux_ms=medians["aux"] * 1000,
        noaux_ms=medians["noaux"] * 1000,
        ratio=ratio,
        paired_ratio=paired,
    )


if __name__ == "__main__":
    main()
