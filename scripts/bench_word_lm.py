"""Word-LM benchmarks on the shipped WikiText-2 sample (tk-preprocess config=wikitext2_sample).

train: tokens/s of the toolkit's trainer step (Trainer.train_step: criterion, update-level gradient scaling,
       lr schedule, logging) vs a minimal plain-PyTorch loop over the same model (a copy with the same
       weights) and the same kind of batches, alternating in rounds so that machine load hits both alike;
       the medians after warm-up and their ratio. Default workload: wikitext2_tiny's adaptive input/softmax
       model widened to 2 layers, d 256, 4 heads, FFN 1024, dropout 0, 8 blocks x 256 tokens, Adam.
eval:  tokens/s of the evaluation at context window C vs 0 (non-overlapping blocks) with tokens_per_sample
       512 on the first --tokens tokens of the test split, for a model of the same shape (random weights:
       speed does not depend on them); the median of --repeats runs each.

  python scripts/bench_word_lm.py train [--data data-bin/wikitext2-sample] [--rounds 5] [--steps 10] [key=value ...]
  python scripts/bench_word_lm.py eval [--data data-bin/wikitext2-sample] [--tokens 20000] [--context 480]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from bench_common import CLOCKS, alternate, median, print_result, set_threads

from toolkit.config.compose import compose_train_config
from toolkit.tasks.language_modeling import score_with_context
from toolkit.train.run import single_process_trainer
from toolkit.train.setup import build_run

WORKLOAD = [
    "model.n_layers=2",
    "model.d_model=256",
    "model.n_heads=4",
    "model.d_ff=1024",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    "model.adaptive_softmax_dropout=0.0",
    "model.max_positions=512",
    "task.tokens_per_sample=256",
    "task.batch_size=8",
    "clip_norm=0.0",
    "tensorboard=false",
    "lr_scheduler.warmup_updates=0",
]


def plain_loop(
    model: torch.nn.Module, train: np.ndarray, batch: int, length: int, lr: float, betas
) -> Callable[[], None]:
    """The reference: random contiguous blocks, forward, mean adaptive-softmax NLL, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas))
    stream = np.concatenate([[2], np.asarray(train, dtype=np.int64)])  # <eos> before the split, as the task
    blocks = len(train) // length
    rng = np.random.default_rng(0)

    def step() -> None:
        starts = rng.integers(0, blocks, size=batch) * length
        chunk = torch.from_numpy(stream[starts[:, None] + np.arange(length + 1)])
        hidden = model(chunk[:, :-1])[0]
        loss = model.output_nll(hidden, chunk[:, 1:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train(args: argparse.Namespace) -> None:
    cfg = compose_train_config(args.config, [f"data={args.data}", *WORKLOAD, *args.overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = single_process_trainer(cfg, Path(run_dir))
        reference = trainer.task.build_model(cfg.model)
        reference.load_state_dict(trainer.model.state_dict())
        reference.train()
        plain = plain_loop(
            reference,
            trainer.task.splits["train"],
            cfg.task.batch_size,
            cfg.task.tokens_per_sample,
            cfg.optimizer.lr,
            cfg.optimizer.betas,
        )
        tokens = cfg.task.batch_size * cfg.task.tokens_per_sample * cfg.update_freq
        times = alternate(
            {"plain": plain, "toolkit": trainer.train_step}, args.rounds, args.steps, args.warmup, args.clock
        )
    plain_tps, toolkit_tps = [tokens / x for x in times["plain"]], [tokens / x for x in times["toolkit"]]
    p, t = median(plain_tps), median(toolkit_tps)
    params = sum(x.numel() for x in trainer.model.parameters())
    print(
        f"workload: {cfg.model.name} (adaptive input/softmax, cutoffs {list(cfg.model.adaptive_cutoffs)}) "
        f"{params:,} params, vocab {trainer.task.vocab_size}, batch {cfg.task.batch_size}x{cfg.task.tokens_per_sample}, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps, {args.clock} clock"
    )
    print(f"plain PyTorch loop : {p:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in plain_tps)})")
    print(f"toolkit trainer    : {t:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in toolkit_tps)})")
    print(f"ratio toolkit/plain: {t / p:.3f}")
    print_result(
        "word_lm_train",
        threads=args.threads,
        clock=args.clock,
        plain_tokens_per_s=p,
        toolkit_tokens_per_s=t,
        ratio=t / p,
    )


def bench_eval(args: argparse.Namespace) -> None:
    overrides = [o for o in WORKLOAD if not o.startswith("task.tokens_per_sample")]
    cfg = compose_train_config(
        args.config, [f"data={args.data}", *overrides, "task.tokens_per_sample=512", *args.overrides]
    )
    run = build_run(cfg)
    model = run.model.eval()
    tokens = np.asarray(run.task.splits["test"][: args.tokens])
    length = cfg.task.tokens_per_sample
    clock = CLOCKS[args.clock]
    results = {}
    for context in (0, args.context):
        times = []
        for _ in range(args.repeats):
            start = clock()
            _, count = score_with_context(model, tokens, length, context, args.batch_size)
            times.append(clock() - start)
        results[context] = count / median(times)
        print(
            f"context {context:4d}/{length}: {results[context]:10.0f} tokens/s  "
            f"(runs: {', '.join(f'{x:.2f}s' for x in times)}, {count} tokens)"
        )
    print(
        f"workload: {sum(p.numel() for p in model.parameters()):,} params, {args.threads} threads, "
        f"batch {args.batch_size} windows; slowdown of context {args.context}: "
        f"{results[0] / results[args.context]:.1f}x"
    )
    print_result(
        "word_lm_eval",
        threads=args.threads,
        clock=args.clock,
        context=args.context,
        tokens_per_s={str(c): r for c, r in results.items()},
        slowdown=results[0] / results[args.context],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("train", "eval"))
    parser.add_argument("--config", default="wikitext2_tiny")
    parser.add_argument("--data", default="data-bin/wikitext2-sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (use with --threads 1 under load)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="train: alternating timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="train: steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="train: untimed steps of each loop first")
    parser.add_argument("--tokens", type=int, default=20000, help="eval: score the first N test tokens")
    parser.add_argument("--context", type=int, default=480, help="eval: context window compared with 0")
    parser.add_argument("--batch-size", type=int, default=8, help="eval: windows per batch")
    parser.add_argument("--repeats", type=int, default=3, help="eval: runs per setting")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    set_threads(args.threads)
    bench_train(args) if args.mode == "train" else bench_eval(args)


if __name__ == "__main__":
    main()
