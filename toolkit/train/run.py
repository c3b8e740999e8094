"""What `tk-train` does after the config is resolved: a dry run, or a full (resumable) training run."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from toolkit.data.atomic import atomic_write_bytes
from toolkit.distributed import comm
from toolkit.distributed.setup import distributed_context
from toolkit.errors import DISTRIBUTED_EXIT, DataError
from toolkit.train import checkpoint as ckpt
from toolkit.train.averaging import AVERAGE, check_averaging, write_average
from toolkit.train.compile import compile_model
from toolkit.train.finetune import freeze_all_but, init_from_checkpoint
from toolkit.train.global_batch import apply_global_batch, describe
from toolkit.train.param_groups import build_param_groups
from toolkit.train.resume_check import check_resume_fits
from toolkit.train.run_lock import RunFolderBusy, RunFolderLock
from toolkit.train.setup import build_run, parameter_summary
from toolkit.train.signals import Interrupted
from toolkit.train.summary import report_run
from toolkit.train.trainer import Trainer

log = logging.getLogger("toolkit.train")


def dry_run(cfg: Any) -> Dict[str, Any]:
    """Build task and model; return the summary whose JSON is the last stdout line."""
    # the batch split for the world size the run would have (torchrun's, else distributed.world_size)
    batch = apply_global_batch(cfg, int(os.environ.get("WORLD_SIZE", cfg.distributed.world_size)))
    run = build_run(cfg)
    summary = {"model": cfg.model.name, **parameter_summary(run.model), **run.task.summary(), **batch}
    print(run.model)
    for key, value in summary.items():
        print(f"{key}: {value}")
    return summary


def _write_run_files(cfg: Any, run_dir: Path, preset: str, argv: List[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    command = {"preset": preset, "argv": argv, "command_line": " ".join(shlex.quote(a) for a in argv)}
    atomic_write_bytes(run_dir / "command.json", (json.dumps(command, indent=2) + "\n").encode())


def train(cfg: Any, preset: str, argv: List[str]) -> int:
    """Train (resuming from run_dir/checkpoint_last.pt when present); returns the exit code. The callers (tk-train,
    a Hydra job) have run toolkit.config.validate.check_run: data, run folder, task and model are checked."""
    check_averaging(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed_context(cfg) as (device, rank, world_size):
        run_dir = Path(cfg.run_dir)
        if rank != 0:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports; the others only warn
        lock = RunFolderLock(run_dir)
        busy: Optional[RunFolderBusy] = None
        if rank == 0:
            try:
                lock.acquire()
            except RunFolderBusy as error:
                busy = error
        if comm.any_rank(busy is not None):  # every rank of a refused run leaves with the same exit code
            raise busy or RunFolderBusy(f"run_dir={run_dir} is in use by another tk-train")
        try:
            return _train_locked(cfg, preset, argv, run_dir, device, rank, world_size)
        finally:
            lock.release()


def _train_locked(
    cfg: Any, preset: str, argv: List[str], run_dir: Path, device: torch.device, rank: int, world_size: int
) -> int:
    """Everything is checked (checkpoint readable, fits the new config and data) before the run folder changes."""
    started = time.perf_counter()
    batch = apply_global_batch(cfg, world_size)  # sets the per-process batch and update_freq the run builds with
    resume = ckpt.find_resume(run_dir)
    state = ckpt.load_checkpoint(resume) if resume is not None else None
    run = build_run(cfg, rank, world_size)
    model = run.model.to(device)
    if state is not None:
        check_resume_fits(state, cfg, model, run.task, resume)
    elif cfg.init_from:
        init_from_checkpoint(model, cfg.init_from, cfg.init_from_min_fraction)
    # reported once the start is known to fit: a refused run says one line
    log.info(describe(batch))
    params = parameter_summary(model)
    log.info("model %s: %s parameters (%s)", cfg.model.name, f"{params['parameters']:,}", json.dumps(params))
    freeze_all_but(model, cfg.train_only)
    groups = build_param_groups(model, cfg.optimizer, cfg.lr_scheduler, cfg.clip_norm, cfg.param_groups)
    for group in groups:
        log.info(
            "parameter group %s: %d tensors, optimizer %s",
            group.name,
            len(group.params),
            type(group.optimizer).__name__,
        )
    if cfg.compile:
        compile_model(model, cfg.compile_backend)
    wrap = (lambda m: comm.wrap_ddp(m, device, cfg.distributed)) if world_size > 1 else None
    trainer = Trainer(cfg, run.task, model, run.criterion, groups, device, run_dir, wrap)
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (KeyError, ValueError, RuntimeError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(
                f"cannot resume from {resume}: {first} (resume with the run's settings, or choose another run_dir)"
            ) from None
        log.info("resumed from %s at step %d (epoch %d)", resume, trainer.step, trainer.epoch)
        del state
    if rank == 0:
        ckpt.sweep_temporaries(run_dir)
        _write_run_files(cfg, run_dir, preset, argv)
    try:
        code = trainer.train()
    except RuntimeError as error:
        if world_size == 1:
            raise
        # a collective failed: another rank died, or did not answer within distributed.timeout_s
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"error: rank {rank}: distributed training stopped: {first} (another rank died or timed out "
            f"after {cfg.distributed.timeout_s}s)",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        # the process group is broken: tearing it down, or exiting while gloo's threads still wait on the
        # dead peer, can abort the process (SIGABRT) instead of giving the documented exit code
        os._exit(DISTRIBUTED_EXIT)
    if code == 0 and cfg.average_last_n:
        if rank == 0:
            write_average(run_dir, cfg.average_last_n)
        if world_size > 1:
            comm.barrier()  # the others read what rank 0 wrote
    metrics = None
    if code == 0 and cfg.final_subset:
        try:
            metrics = _final_evaluation(cfg, run_dir, model, run.task, device, rank)
        except Interrupted as stop:
            stop.during = f"the final evaluation ({run_dir / ckpt.LAST} is saved)"
            raise
    if code == 0 and rank == 0:
        report_run(run_dir, run.task, metrics, time.perf_counter() - started)
    if world_size > 1:
        comm.barrier()  # leave together: a rank tearing down while a peer still talks to it can abort
    return code


def _final_evaluation(
    cfg: Any, run_dir: Path, model: torch.nn.Module, task: Any, device: torch.device, rank: int
) -> Dict[str, Any]:
    # the averaged model when the run averages (the papers' number), else the best, else the last
    average = run_dir / AVERAGE
    best = average if cfg.average_last_n and average.is_file() else run_dir / ckpt.BEST
    if best.is_file():
        model.load_state_dict(ckpt.load_checkpoint(best)["model"])
    model.eval()
    metrics = task.evaluate(model, cfg.final_subset, device)
    metrics["checkpoint"] = str(best if best.is_file() else run_dir / ckpt.LAST)
    if rank == 0:
        print(json.dumps(metrics), flush=True)
    return metrics


def single_process_trainer(cfg: Any, run_dir: Path, device: torch.device = torch.device("cpu")) -> Trainer:
    """A Trainer for in-process use (benchmarks, tests): one process, no resume, no run files."""
    apply_global_batch(cfg, 1)
    run = build_run(cfg)
    run.model.to(device).train()
    groups = build_param_groups(run.model, cfg.optimizer, cfg.lr_scheduler, cfg.clip_norm, cfg.param_groups)
    if cfg.get("compile"):
        compile_model(run.model, cfg.compile_backend)
    return Trainer(cfg, run.task, run.model, run.criterion, groups, device, Path(run_dir))
