"""Forward+backward time of a product-key memory layer vs a dense FFN (CPU).

The point (Lample et al. 2019): a PKM read costs heads * (sqrt(|K|) * key_dim + k^2 + k * d) per token, so its
time grows with k and heads, barely with the number of slots |K|. Two sweeps:
  1. |K| = 64^2 ... 1024^2 at the paper's heads=4, k=32 (value gradients dense and sparse);
  2. heads in {1, 4} x k in {8, 32} at |K| = 256^2 (dense value gradients).
Dense value gradients materialise a full |K| x d table every step (2 GiB at 1024^2 x 512), which is memory
bandwidth, not compute; sparse=True shows the cost of the read itself.

    python scripts/bench_pkm_layer.py [--tokens 2048] [--threads 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, List, Tuple

import torch
from bench_common import alternate, median, print_result, set_threads
from torch import nn

from toolkit.modules.pkm import PKMConfig, ProductKeyMemory


def fwd_bwd(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    """One forward + backward (grads set to None first, as zero_grad does)."""

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        layer(x).backward(grad_out)

    return step


def time_against(layer: nn.Module, ref: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> Tuple[float, float]:
    """Median seconds of `layer` and of `ref`, run in alternating rounds so that load changes hit both alike."""
    grad_out = torch.randn(x.shape[0], x.shape[1], layer_out_dim(layer))
    times = alternate({"pkm": fwd_bwd(layer, x, grad_out), "ffn": fwd_bwd(ref, x, grad_out)}, runs, 1, warmup)
    return median(times["pkm"]), median(times["ffn"])


def layer_out_dim(layer: nn.Module) -> int:
    return layer.d_out if isinstance(layer, ProductKeyMemory) else layer[-1].out_features


def ffn(d_model: int, d_ff: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-ff", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    d = args.d_model
    x = torch.randn(1, args.tokens, d, requires_grad=True)

    dense_ffn = ffn(d, args.d_ff)
    rows: List[Tuple[int, int, int, str, float, float]] = []
    cases: List[Tuple[int, int, int, bool]] = []
    for n in (64, 128, 256, 512, 1024):
        cases += [(n, 4, 32, False), (n, 4, 32, True)]
    for heads in (1, 4):
        for knn in (8, 32):
            cases.append((256, heads, knn, False))
    for n, heads, knn, sparse in cases:
        cfg = PKMConfig(mem_size=n * n, heads=heads, knn=knn, sparse=sparse)
        layer = ProductKeyMemory(d, d, cfg)
        sec, ref = time_against(layer, dense_ffn, x, args.runs, args.warmup)
        rows.append((n, heads, knn, "sparse" if sparse else "dense", sec, ref))
        del layer

    print(
        f"tokens={args.tokens} d_model={d} FFN {d}-{args.d_ff}-{d} threads={args.threads}, median of "
        f"{args.runs} after {args.warmup} warm-up, PKM and FFN alternated; PKM key_dim=256, BatchNorm on; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| slots | heads | k | value grad | PKM fwd+bwd ms | FFN fwd+bwd ms | PKM / FFN |")
    print("|---|---|---|---|---|---|---|")
    for n, heads, knn, grad, sec, ref in rows:
        print(f"| {n}^2 | {heads} | {knn} | {grad} | {sec * 1e3:.1f} | {ref * 1e3:.1f} | {sec / ref:.2f} |")
    print_result(
        "pkm_layer",
        threads=args.threads,
        tokens=args.tokens,
        rows=[
            {"slots": n * n, "heads": heads, "knn": knn, "value_grad": grad, "pkm_ms": sec * 1e3, "ffn_ms": ref * 1e3}
            for n, heads, knn, grad, sec, ref in rows
        ],
    )


if __name__ == "__main__":
    main()
