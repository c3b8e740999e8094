"""A batch per update that does not depend on the number of processes.

A preset states its batch once, for the whole update: `batch.tokens_per_update` (translation: the token cap
summed over processes and accumulation steps, as fairseq's max_tokens x GPUs x update_freq) or
`batch.sequences_per_update` (language models: windows, blocks or streams per update). At start-up, with the
world size known, it is split into the per-process batch (`task.max_tokens` / `task.batch_size`) and
`update_freq`:

    global = world_size x update_freq x per_process

`update_freq` is the smallest number of micro-batches (from the one that fits, up to twice that) whose
per-process batch fits the task's per-process value (the most one process holds in one micro-batch) and splits
the global batch exactly. Streamed training (`task.mode=stream`) only divides the streams over the processes
(update_freq 1): accumulating would read consecutive blocks of the same streams, not more streams. A batch
that cannot be split exactly stops the run with one line. With both settings 0 (the default), `task.*` and
`update_freq` are used as given, per process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict

from toolkit.errors import ConfigError

log = logging.getLogger("toolkit.train")


@dataclass
class GlobalBatchConfig:
    """The batch of one update over all processes; the per-process batch and update_freq are derived from it."""

    tokens_per_update: int = 0  # token-batched tasks (translation): max tokens per update (0 = use task.max_tokens)
    sequences_per_update: int = 0  # LM tasks: windows/blocks/streams per update (0 = use task.batch_size)


def _per_process_key(task_cfg: Any, by_tokens: bool) -> str:
    key = "max_tokens" if by_tokens else "batch_size"
    if key not in task_cfg:
        setting = "tokens_per_update" if by_tokens else "sequences_per_update"
        other = "sequences_per_update" if by_tokens else "tokens_per_update"
        raise ConfigError(
            f"batch.{setting} does not apply to task '{task_cfg.name}' (it has no task.{key}); use batch.{other}"
        )
    return key


def split(total: int, world_size: int, cap: int, streamed: bool, what: str, cap_key: str) -> tuple[int, int]:
    """(per_process, update_freq) with world_size * update_freq * per_process == total and per_process <= cap."""
    if total % world_size:
        raise ConfigError(
            f"{what}={total} cannot be split exactly over {world_size} processes (not a multiple of {world_size})"
        )
    share = total // world_size
    if streamed:
        if share > cap:
            raise ConfigError(
                f"{what}={total} over {world_size} processes is {share} streams per process, more "
                f"than {cap_key}={cap}; streamed training cannot accumulate (use more processes)"
            )
        return share, 1
    if cap < 1:
        raise ConfigError(f"{cap_key}={cap} must be positive")
    fewest = math.ceil(share / cap)
    for update_freq in range(fewest, 2 * fewest + 1):
        if share % update_freq == 0:
            return share // update_freq, update_freq
    raise ConfigError(
        f"{what}={total} cannot be split exactly over {world_size} processes with at most "
        f"{cap_key}={cap} per micro-batch ({share} per process is not a multiple of "
        f"{fewest}..{2 * fewest} micro-batches); choose a multiple of {world_size * fewest}"
    )


def apply_global_batch(cfg: Any, world_size: int) -> Dict[str, int]:
    """Set task.max_tokens/batch_size and update_freq from cfg.batch for `world_size` processes (in place).

    Returns the figures of the split (also for explicit per-process settings): world_size, update_freq, the
    per-process batch and the batch per update, with "tokens_per_update" and, for LMs, "sequences_per_update".
    """
    batch = cfg.get("batch") or {}
    tokens, sequences = batch.get("tokens_per_update", 0), batch.get("sequences_per_update", 0)
    if tokens and sequences:
        raise ConfigError("batch.tokens_per_update and batch.sequences_per_update are both set; set one of them")
    by_tokens = bool(tokens) or (not sequences and "max_tokens" in cfg.task)
    total = tokens or sequences
    if not total and ("max_tokens" if by_tokens else "batch_size") not in cfg.task:
        return {"world_size": world_size, "update_freq": int(cfg.update_freq)}  # a task batched otherwise
    key = _per_process_key(cfg.task, by_tokens)
    if total:
        setting = "batch.tokens_per_update" if tokens else "batch.sequences_per_update"
        if total < 0:
            raise ConfigError(f"{setting}={total} must be positive (0 = per-process task.{key} and update_freq)")
        if cfg.update_freq != 1:
            raise ConfigError(
                f"update_freq={cfg.update_freq} and {setting}={total} are both set: update_freq is "
                f"derived from {setting}; set {setting}=0 to give task.{key} and update_freq per process"
            )
        streamed = cfg.task.get("mode") == "stream"
        per_process, update_freq = split(total, world_size, cfg.task[key], streamed, setting, f"task.{key}")
        cfg.task[key], cfg.update_freq = per_process, update_freq
    figures = {"world_size": world_size, "update_freq": int(cfg.update_freq)}
    per_update = world_size * cfg.update_freq * cfg.task[key]
    if by_tokens:
        figures.update({"max_tokens_per_process": int(cfg.task.max_tokens), "tokens_per_update": per_update})
    else:
        figures.update(
            {
                "sequences_per_process": int(cfg.task.batch_size),
                "sequences_per_update": per_update,
                "tokens_per_update": per_update * int(cfg.task.tokens_per_sample),
            }
        )
    return figures


def describe(figures: Dict[str, int]) -> str:
    """One log line stating the split."""
    if "tokens_per_update" not in figures:
        return f"batch: as the task batches, x update_freq {figures['update_freq']} x {figures['world_size']} processes"
    if "sequences_per_update" in figures:
        return (
            f"batch: {figures['sequences_per_update']} sequences ({figures['tokens_per_update']:,} tokens) per "
            f"update = {figures['world_size']} processes x update_freq {figures['update_freq']} x "
            f"{figures['sequences_per_process']} per process (task.batch_size)"
        )
    return (
        f"batch: {figures['tokens_per_update']:,} tokens per update (at most) = {figures['world_size']} "
        f"processes x update_freq {figures['update_freq']} x {figures['max_tokens_per_process']} per process "
        f"(task.max_tokens)"
    )


def check_global_batch(cfg: Any, world_size: int) -> None:
    """Stop with one line before anything starts when the batch cannot be split for `world_size` processes."""
    import copy

    apply_global_batch(copy.deepcopy(cfg), world_size)
