#!/usr/bin/env python
"""Benchmark: does adaptive attention span really trim the work? (Sukhbaatar et al. 2019)

Compares training steps (forward + backward + Adagrad step + span clamping, streamed blocks with the cache
carried) of three models that differ only in attention span:
  adaptive   S = 8192, spans set directly to values spread over [100, 300] (a settled model): the keys,
             positions and cache are trimmed to the window max z + R rounded up to 64 (384 here);
  fixed      a fixed hard span of 512 (the baseline the paper compares with);
  untrimmed  (optional, --with-untrimmed) the adaptive model without trimming: every query sees 8192 keys.
The span parameters sit in an Adagrad group with lr 0, so the window stays put while timing (they still get
gradients, so the mask's backward is timed).

Time: median and minimum over the timed steps of the wall time, and the median process CPU time (all
threads); on a shared machine the minimum is the least disturbed. Memory: each variant runs in its own
subprocess and reports its peak resident set size (resource.getrusage(RUSAGE_SELF).ru_maxrss), and that
peak minus the RSS after building the model and optimizer ("train mem": activations, gradients, optimizer
state, allocator slack). tracemalloc does not see
torch's allocations. With --device cuda it reports torch.cuda.max_memory_allocated instead.

    python scripts/bench_adaptive_span.py                 # 4 layers, d256, block 512, batch 4, on CPU
    python scripts/bench_adaptive_span.py --steps 5 --with-untrimmed --batch 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from bench_common import device_sync, median, peak_memory_mib, peak_rss_mib, print_result, set_threads

from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.modules.attention.span_attention import current_windows

VARIANTS = ("adaptive", "fixed", "untrimmed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--max-span", type=int, default=8192, help="S of the adaptive model")
    p.add_argument("--fixed-span", type=int, default=512, help="span of the fixed-span baseline")
    p.add_argument("--span-low", type=float, default=100.0)
    p.add_argument("--span-high", type=float, default=300.0)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (fill the cache)")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--with-untrimmed", action="store_true", help="also run the untrimmed S=8192 model")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace, variant: str) -> StreamingLM:
    adaptive = variant != "fixed"
    cfg = StreamingLMConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.d_ff,
        block_size=args.block,
        attn_span=args.max_span if adaptive else args.fixed_span,
        adaptive_span=adaptive,
        dropout=args.dropout,
    )
    model = StreamingLM(cfg)
    if adaptive:
        # spans spread evenly over [low, high], shuffled over layers and heads with a fixed seed
        n = args.layers * args.heads
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        spans = torch.linspace(args.span_low, args.span_high, n)[order]
        for layer, row in zip(model.layers, spans.view(args.layers, args.heads)):
            layer.self_attn.span.span_param.data = row / args.max_span
            layer.self_attn.trim = variant != "untrimmed"
    return model.to(args.device)


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    set_threads(args.threads)
    device = torch.device(args.device)
    model = build(args, args.worker)
    spans = [p for n, p in model.named_parameters() if n.endswith("span_param")]
    others = [p for n, p in model.named_parameters() if not n.endswith("span_param")]
    groups = [{"params": others}] + ([{"params": spans, "lr": 0.0}] if spans else [])
    optimizer = torch.optim.Adagrad(groups, lr=0.07)
    sync = device_sync(device)
    baseline_rss = peak_rss_mib()
    cache, times, cpu_times = None, [], []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, args.vocab, (args.batch, args.block + 1), device=device)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        logits, aux, cache = model(tokens[:, :-1], cache)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
        if "span_l1" in aux:
            loss = loss + 2e-6 * aux["span_l1"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_update()  # spans back into range
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result = {
        "variant": args.worker,
        "windows": current_windows(model) if args.worker != "untrimmed" else [args.max_span] * args.layers,
        "cache": [c.size(1) for c in cache],
        "step_ms": 1000 * median(times),
        "cpu_ms": 1000 * median(cpu_times),
        "min_ms": 1000 * min(times),
        **peak_memory_mib(device),
    }
    result["train_mem_mib"] = result["peak_rss_mib"] - baseline_rss
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    variants = [v for v in VARIANTS if v != "untrimmed" or args.with_untrimmed]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--with-untrimmed"]
    print(
        f"config: {args.layers} layers d{args.d_model} {args.heads} heads ff{args.d_ff} block {args.block} "
        f"batch {args.batch}, {args.steps} timed steps after {args.warmup}, device {args.device}, "
        f"{args.threads} threads; adaptive spans in [{args.span_low:g}, {args.span_high:g}] "
        f"of S={args.max_span}",
        flush=True,
    )
    results = {}
    for variant in variants:
        print(f"running {variant} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, *passthrough, "--worker", variant], capture_output=True, text=True
        )
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        r = results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        mem = (
            f"cuda peak {r['cuda_peak_mib']:.0f} MiB"
            if "cuda_peak_mib" in r
            else (f"peak RSS {r['peak_rss_mib']:.0f} MiB (train mem {r['train_mem_mib']:.0f} MiB)")
        )
        print(
            f"  {variant:9s} window {r['windows']} cache {r['cache']}: {r['step_ms']:.0f} ms/step "
            f"(min {r['min_ms']:.0f}, CPU {r['cpu_ms']:.0f}), {mem}",
            flush=True,
        )
    a, f = results["adaptive"], results["fixed"]
    mem_key = "cuda_peak_mib" if "cuda_peak_mib" in a else "train_mem_mib"
    print(
        f"adaptive / fixed: step time {a['step_ms'] / f['step_ms']:.2f}x "
        f"(min {a['min_ms'] / f['min_ms']:.2f}x, "
        f"CPU {a['cpu_ms'] / f['cpu_ms']:.2f}x), "
        f"{mem_key} {a[mem_key] / f[mem_key]:.2f}x, peak RSS {a['peak_rss_mib'] / f['peak_rss_mib']:.2f}x "
        f"(target <= 1.3x)"
    )
    if "untrimmed" in results:
        u = results["untrimmed"]
        print(
            f"untrimmed / adaptive: step time {u['step_ms'] / a['step_ms']:.2f}x, "
            f"{mem_key} {u[mem_key] / a[mem_key]:.2f}x"
        )
    print_result(
        "adaptive_span",
        threads=args.threads,
        device=args.device,
        variants=results,
        step_ratio=a["step_ms"] / f["step_ms"],
        memory_ratio=a[mem_key] / f[mem_key],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
