"""Where a training step's GPU time goes: the top CUDA kernels of a few bf16 steps, from torch.profiler.

    python scripts/gpu_profile_step.py --preset base_wmt14 --tokens 28672   # one GPU's share of the preset batch
    python scripts/gpu_profile_step.py --preset t12_text8 --set task.batch_size=64

Builds the preset like scripts/gpu_check.py (random weights and tokens), runs warm-up steps, profiles
`--steps` steps and prints the kernels by total CUDA time, with the step's wall time and the share of it the
GPU was busy (a low share: the step is bound by the host launching kernels, not by the GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base_wmt14")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--tokens", type=int, default=28672, help="target tokens per step (translation presets)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device (this profile reads CUDA kernel times)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg, model, criterion = gpu_check.build(args.preset, args.set, device)
    if "tokens_per_sample" in cfg.task and cfg.task.get("tokens_per_sample"):
        batch = gpu_check.char_batch(cfg, device)
    else:
        batch = gpu_check.translation_batch(cfg, device, args.tokens)
    step, _ = gpu_check.train_step_fn(model, criterion, batch, device, args.precision)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        began = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - began) / args.steps
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / args.steps
    print(
        f"{args.preset} {args.precision}: {batch['ntokens']} tokens/step, step {wall * 1e3:.1f} ms, "
        f"GPU busy {busy * 1e3:.1f} ms ({busy / wall:.0%}), {sum(e.count for e in kernels) // args.steps} kernels/step"
    )
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[: args.top]:
        ms = e.self_device_time_total / 1e3 / args.steps
        print(f"{ms:8.2f} ms {ms / 1e3 / busy:6.1%} x{e.count // args.steps:<5d} {e.key[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
