"""What every benchmark script shares: threads, clocks, warm-up, alternating rounds, medians and ratios,
peak memory, and one JSON result line.

Variants are timed in the same process in alternating rounds (round r runs every variant once, the order
reversed on odd rounds), so load that drifts over the run hits every variant alike; each round's seconds per
step are kept, and the report is their median and the ratios between variants. The last line a benchmark
prints is `RESULT {json}`: the numbers of its report, for scripts that collect them.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

CLOCKS: Dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, best with one thread)."""

Times = Dict[str, List[float]]  # variant -> seconds per step of each round


# The Quickstart char LM at the benchmarks' batch (16 x 256 characters, no dropout): the workload that the
# trainer, PKM and DDP benchmarks share, so their figures describe the same model.
CHAR_LM_WORKLOAD = [
    "model.n_layers=2",
    "model.d_model=256",
    "model.n_heads=4",
    "model.d_ff=1024",
    "model.dropout=0.0",
    "task.tokens_per_sample=256",
    "task.batch_size=16",
]


def set_threads(threads: int) -> None:
    """Intra-op threads of this process (every benchmark states how many it used)."""
    torch.set_num_threads(threads)


def device_sync(device: Optional[torch.device]) -> Callable[[], None]:
    """What to call before reading the clock: waits for queued CUDA work, a no-op elsewhere."""
    if device is not None and device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def seconds_per_step(
    step: Callable[[], Any],
    n: int,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """Mean seconds of `n` consecutive calls of `step`."""
    sync()
    start = clock()
    for _ in range(n):
        step()
    sync()
    return (clock() - start) / n


def alternate(
    variants: Dict[str, Callable[[], Any]],
    rounds: int,
    steps: int = 1,
    warmup: int = 0,
    clock: str = "wall",
    sync: Callable[[], None] = lambda: None,
) -> Times:
    """Warm every variant up (`warmup` untimed calls each), then `rounds` rounds of `steps` calls of each
    variant, the order reversed on odd rounds; seconds per step of every round, per variant."""
    timer = CLOCKS[clock]
    for step in variants.values():
        for _ in range(warmup):
            step()
    sync()
    times: Times = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(seconds_per_step(variants[name], steps, timer, sync))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio_of_medians(times: Times, a: str, b: str) -> float:
    """median(a) / median(b)."""
    return median(times[a]) / median(times[b])


def paired_ratio(times: Times, a: str, b: str) -> float:
    """Median of the per-round ratios a / b: the two ran back to back, so each ratio saw the same load."""
    return median([x / y for x, y in zip(times[a], times[b])])


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory_mib(device: Optional[torch.device] = None) -> Dict[str, float]:
    """Peak memory of this process: resident set size, and allocated CUDA memory on a CUDA device."""
    peaks = {"peak_rss_mib": peak_rss_mib()}
    if device is not None and device.type == "cuda":
        peaks["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


def print_result(bench: str, **numbers: Any) -> None:
    """The one machine-readable line of a benchmark's report, always its last: `RESULT {json}`."""
    print("RESULT " + json.dumps({"bench": bench, **numbers}, sort_keys=True), flush=True)
