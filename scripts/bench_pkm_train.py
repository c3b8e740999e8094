"""Training throughput of a char LM whose layer-2 FFN is a product-key memory vs the same model without.

Both are the toolkit's trainer on the shipped text8 sample (2 layers, d256, 4 heads, batch 16 x 256, dropout 0;
memory: 128^2 slots, key dim 256, 4 heads, k = 32, values on their own Adam), alternating in rounds.

  python scripts/bench_pkm_train.py [--data data-bin/text8_sample] [--rounds 5] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_common import CHAR_LM_WORKLOAD, alternate, median, print_result, set_threads

from toolkit.config.compose import compose_train_config
from toolkit.train.run import single_process_trainer

COMMON = [
    *CHAR_LM_WORKLOAD,
    "tensorboard=false",
    "lr_scheduler.warmup_updates=0",
]


def make_step(preset: str, data: str, run_dir: Path):
    cfg = compose_train_config(preset, [f"data={data}", *COMMON])
    trainer = single_process_trainer(cfg, run_dir)
    return trainer.train_step, sum(p.numel() for p in trainer.model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data-bin/text8_sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    tokens = 16 * 256
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_params = make_step("text8_char_tiny", args.data, Path(tmp) / "plain")
        memory, memory_params = make_step("pkm_text8_tiny", args.data, Path(tmp) / "pkm")
        times = alternate({"plain": plain, "pkm": memory}, args.rounds, args.steps, warmup=2)
    p, m = median([tokens / x for x in times["plain"]]), median([tokens / x for x in times["pkm"]])
    print(f"plain 2-layer d256 ({plain_params:,} params): {p:8.0f} tokens/s")
    print(f"layer-2 FFN -> PKM 128^2 ({memory_params:,} params): {m:8.0f} tokens/s")
    print(f"ratio pkm/plain: {m / p:.3f}  ({args.threads} threads, {args.rounds} rounds x {args.steps} steps)")
    print_result("pkm_train", threads=args.threads, plain_tokens_per_s=p, pkm_tokens_per_s=m, ratio=m / p)


if __name__ == "__main__":
    main()
