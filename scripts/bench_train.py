"""Training throughput of the toolkit's trainer vs a minimal plain-PyTorch loop over the same model.

Both run in this process on the task's own batches, alternating in rounds so that machine load affects both
alike; the report is the median tokens/s of each and their ratio. Workloads: baselines/transformer_lm_text8_tiny (char LM, 2 layers,
d256, 4 heads, FFN 1024, batch 16 x 256, dropout 0, Adam), the same with rotary positions
(baselines/rotary_lm_text8_tiny, the Quickstart) and baselines/transformer_iwslt14_tiny (2+2 layers, d256, 2048 tokens per
batch, label smoothing 0.1); 2 threads.

  python scripts/bench_train.py [--config baselines/transformer_lm_text8_tiny] [--data data-bin/text8_sample] [--rounds 5] [--steps 20]
  python scripts/bench_train.py --config baselines/transformer_iwslt14_tiny --data data-bin/iwslt14_sample
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import CHAR_LM_WORKLOAD, alternate, median, print_result, set_threads

from toolkit.config.compose import compose_train_config
from toolkit.config.preset_names import current_name
from toolkit.train.run import single_process_trainer

WORKLOADS = {
    # the Quickstart model at the benchmark batch (16 x 256), with learned positions and with rotary ones
    "baselines/transformer_lm_text8_tiny": CHAR_LM_WORKLOAD,
    "baselines/rotary_lm_text8_tiny": CHAR_LM_WORKLOAD,
    # a 2+2-layer d256 translation model on the shipped IWSLT sample
    "baselines/transformer_iwslt14_tiny": [
        "model.encoder_layers=2",
        "model.decoder_layers=2",
        "model.d_model=256",
        "model.ffn_dim=1024",
        "model.dropout=0.0",
        "task.max_tokens=2048",
    ],
}
COMMON = ["clip_norm=0.0", "tensorboard=false", "lr_scheduler.warmup_updates=0"]


def plain_loop(model: torch.nn.Module, task, lr: float, betas, label_smoothing: float):
    """The reference: the task's batches, forward, mean cross-entropy, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas))
    ignore = task.pad_idx if task.pad_idx is not None else -100
    position = iter(range(10**9))

    def step() -> None:
        batch = task.train_batch(1, next(position) % task.epoch_length(1))
        logits = model(**batch["net_input"])[0]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            batch["target"].reshape(-1),
            ignore_index=ignore,
            label_smoothing=label_smoothing,
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="baselines/transformer_lm_text8_tiny")
    parser.add_argument("--data", default="data-bin/text8_sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    set_threads(args.threads)

    workload = WORKLOADS.get(current_name(args.config), [])  # an old flat name picks the same workload
    cfg = compose_train_config(args.config, [f"data={args.data}", *workload, *COMMON, *args.overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = single_process_trainer(cfg, Path(run_dir))
        reference = trainer.task.build_model(cfg.model)
        reference.load_state_dict(trainer.model.state_dict())
        reference.train()
        smoothing = cfg.criterion.get("label_smoothing", 0.0)
        plain = plain_loop(reference, trainer.task, cfg.optimizer.lr, cfg.optimizer.betas, smoothing)
        # tokens per step, averaged over the batches the timed steps see (token batching varies in size)
        tokens = statistics.mean(
            trainer.task.train_batch(1, i)["ntokens"] for i in range(min(50, trainer.task.epoch_length(1)))
        )
        times = alternate({"plain": plain, "toolkit": trainer.train_step}, args.rounds, args.steps, args.warmup)
    plain_tps, toolkit_tps = [tokens / x for x in times["plain"]], [tokens / x for x in times["toolkit"]]
    p, t = median(plain_tps), median(toolkit_tps)
    params = sum(x.numel() for x in trainer.model.parameters())
    print(
        f"workload: {args.config}: {cfg.model.name} {params:,} params, {tokens:.0f} tokens per step, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps"
    )
    print(f"plain PyTorch loop : {p:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in plain_tps)})")
    print(f"toolkit trainer    : {t:10.0f} tokens/s  (rounds: {', '.join(f'{x:.0f}' for x in toolkit_tps)})")
    print(f"ratio toolkit/plain: {t / p:.3f}")
    print_result(
        "train", workload=args.config, threads=args.threads, plain_tokens_per_s=p, toolkit_tokens_per_s=t, ratio=t / p
    )


if __name__ == "__main__":
    main()
