#!/usr/bin/env python
"""Training-step time of plain multi-head attention vs MAE-7 vs MAE-6 in the same transformer-like stack.

Each variant is a stack of pre-LN (attention + FFN) blocks built here from the modules; one step is
forward + backward + Adam on random inputs. Variants are timed round-robin in one process (so machine load
hits all of them alike); reported: the median step time after warm-up, its ratio to plain MHA, and the
median of the per-round (paired) ratios.

    python scripts/bench_mae.py                 # encoder-style: one gate per sequence
    python scripts/bench_mae.py --causal        # decoder/LM-style: one gate per position (prefix means)
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from bench_common import alternate, device_sync, median, paired_ratio, print_result, set_threads
from torch import Tensor, nn

from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.mae import MAEAttention, MAEConfig


class Block(nn.Module):
    """Pre-LN residual attention + ReLU FFN, dropout 0.1 like transformer-base."""

    def __init__(self, attention: Callable[[], nn.Module], d_model: int, d_ff: int, dropout: float = 0.1):
        super().__init__()
        self.attn, self.attn_norm = attention(), nn.LayerNorm(d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        h = self.attn_norm(x)
        x = x + F.dropout(self.attn(h, causal=causal, context=h), self.dropout, self.training)
        h = self.fc2(F.dropout(F.relu(self.fc1(self.ffn_norm(x))), self.dropout, self.training))
        return x + F.dropout(h, self.dropout, self.training)


class Stack(nn.Module):
    def __init__(self, attention: Callable[[], nn.Module], layers: int, d_model: int, d_ff: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(attention, d_model, d_ff) for _ in range(layers))

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        for block in self.blocks:
            x = block(x, causal)
        return x


def attention_factories(args: argparse.Namespace) -> Dict[str, Callable[[], nn.Module]]:
    d, h = args.d_model, args.heads
    mae = functools.partial(MAEAttention, d, h, 0.0)
    return {
        "MHA": functools.partial(MultiheadAttention, d, h, 0.0),
        "MAE-7": functools.partial(mae, cfg=MAEConfig(drop=1, gate_hidden=args.gate_hidden)),
        "MAE-6": functools.partial(mae, cfg=MAEConfig(drop=2, gate_hidden=args.gate_hidden)),
    }


def step_fn(model: Stack, x: Tensor, causal: bool) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x, causal).float().pow(2).mean().backward()
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=4096, help="tokens per batch")
    p.add_argument("--seq-len", type=int, default=128, help="batch size = tokens / seq-len")
    p.add_argument("--gate-hidden", type=int, default=None, help="MAE gate hidden size (default d_model)")
    p.add_argument("--causal", action="store_true", help="causal attention and per-position (prefix) gates")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine, best with --threads 1)",
    )
    args = p.parse_args()

    set_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = max(1, args.tokens // args.seq_len)
    x = torch.randn(batch, args.seq_len, args.d_model, device=device)
    steps, params = {}, {}
    for name, factory in attention_factories(args).items():
        model = Stack(factory, args.layers, args.d_model, args.ffn).to(device).train()
        params[name] = sum(q.numel() for q in model.parameters())
        steps[name] = step_fn(model, x, args.causal)
    # one step of each variant per round: drifting machine load hits every variant alike
    times = alternate(steps, args.steps, 1, args.warmup, args.clock, device_sync(device))

    kind = "causal (per-position gates)" if args.causal else "non-causal (per-sequence gates)"
    print(
        f"{args.layers} layers, d={args.d_model}, {args.heads} heads, ffn={args.ffn}, batch {batch}x{args.seq_len}"
        f" tokens, {kind}, gate_hidden={args.gate_hidden or args.d_model}, {args.device}, {args.threads} threads,"
        f" {args.clock} clock,"
        f" median of {args.steps} steps after {args.warmup} warm-up"
    )
    base = median(times["MHA"])
    # paired ratio: each round's step against the MHA step next to it, robust to load that drifts
    print(f"{'variant':8s} {'params':>11s} {'step ms':>9s} {'ratio':>7s} {'paired':>7s}")
    rows = {}
    for name, t in times.items():
        med, paired = median(t), paired_ratio(times, name, "MHA")
        rows[name] = {"step_ms": 1000 * med, "ratio": med / base, "paired": paired, "params": params[name]}
        print(f"{name:8s} {params[name]:11,d} {1000 * med:9.1f} {med / base:7.3f} {paired:7.3f}")
    print_result("mae", causal=args.causal, threads=args.threads, clock=args.clock, variants=rows)


if __name__ == "__main__":
    main()
