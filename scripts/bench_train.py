"""Training throughput of the toolkit's trainer vs a minimal plain-PyTorch loop over the same model.

Both run in this process on the same data, alternating in rounds so that machine load affects both alike;
the report is the median tokens/s of each and their ratio. Default workload (the foundation issue's): char LM,
2 layers, d_model 256, 4 heads, FFN 1024, batch 16 x 256, dropout 0, Adam, 2 threads.

  python scripts/bench_train.py [--data data-bin/text8_sample] [--rounds 5] [--steps 20] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config.compose import compose_train_config
from toolkit.train.param_groups import build_param_groups
from toolkit.train.setup import build_run
from toolkit.train.trainer import Trainer

WORKLOAD = [
    "model.n_layers=2", "model.d_model=256", "model.n_heads=4", "model.d_ff=1024", "model.dropout=0.0",
    "task.tokens_per_sample=256", "task.batch_size=16", "clip_norm=0.0", "tensorboard=false",
    "lr_scheduler.warmup_updates=0",
]


def plain_loop(model: torch.nn.Module, data: np.ndarray, batch: int, window: int, lr: float):
    """The reference: sample windows, forward, mean cross-entropy, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)

    def step() -> None:
        offsets = rng.integers(0, len(data) - window - 1, size=batch)
        chunk = torch.from_numpy(data[offsets[:, None] + np.arange(window + 1)].astype(np.int64))
        logits = model(chunk[:, :-1])[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="text8_char_tiny")
    parser.add_argument("--data", default="data-bin/text8_sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = compose_train_config(args.config, [f"data={args.data}", *WORKLOAD, *args.overrides])
    run = build_run(cfg)
    groups = build_param_groups(run.model, cfg.optimizer, cfg.lr_scheduler, cfg.clip_norm, cfg.param_groups)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run.task, run.model, run.criterion, groups, torch.device("cpu"), Path(run_dir))
        run.model.train()
        reference = run.task.build_model(cfg.model)
        reference.load_state_dict(run.model.state_dict())
        reference.train()
        plain = plain_loop(reference, run.task.splits["train"], cfg.task.batch_size, cfg.task.tokens_per_sample, cfg.optimizer.lr)
        toolkit_step = trainer.train_step
        timed(plain, args.warmup), timed(toolkit_step, args.warmup)
        tokens = cfg.task.batch_size * cfg.task.tokens_per_sample * cfg.update_freq
        plain_tps, toolkit_tps = [], []
        for _ in range(args.rounds):
            plain_tps.append(tokens / timed(plain, args.steps))
            toolkit_tps.append(tokens / timed(toolkit_step, args.steps))
    p, t = statistics.median(plain_tps), statistics.median(toolkit_tps)
    params = sum(x.numel() for x in run.model.parameters())
    print(f"workload: {cfg.model.name} {params:,} params, batch {cfg.task.batch_size}x{cfg.task.tokens_per_sample}, "
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps")
    print(f"plain PyTorch loop : {p:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in plain_tps)})")
    print(f"toolkit trainer    : {t:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in toolkit_tps)})")
    print(f"ratio toolkit/plain: {t / p:.3f}")


if __name__ == "__main__":
    main()
