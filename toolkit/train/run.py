"""What `tk-train` does after the config is resolved: a dry run, or a full (resumable) training run."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from omegaconf import OmegaConf

from toolkit.data.atomic import atomic_write_bytes
from toolkit.distributed import comm
from toolkit.errors import DISTRIBUTED_EXIT, ConfigError
from toolkit.distributed.setup import distributed_context
from toolkit.train import checkpoint as ckpt
from toolkit.train.finetune import freeze_all_but, init_from_checkpoint
from toolkit.train.param_groups import build_param_groups
from toolkit.train.setup import build_run, parameter_summary
from toolkit.train.summary import report_run
from toolkit.train.trainer import Trainer

log = logging.getLogger("toolkit.train")


def dry_run(cfg: Any) -> Dict[str, Any]:
    """Build task and model; return the summary whose JSON is the last stdout line."""
    run = build_run(cfg)
    summary = {"model": cfg.model.name, **parameter_summary(run.model), **run.task.summary()}
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
    """Train (resuming from run_dir/checkpoint_last.pt when present); returns the exit code."""
    if cfg.data is None:
        raise ConfigError("missing required value for key 'data' (a folder made by tk-preprocess)")
    if not Path(cfg.data).is_dir():
        raise ConfigError(f"data={cfg.data}: no such folder (prepare it with tk-preprocess)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    with distributed_context(cfg) as (device, rank, world_size):
        run_dir = Path(cfg.run_dir)
        if rank != 0:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports; the others only warn
        if rank == 0:
            _write_run_files(cfg, run_dir, preset, argv)
        run = build_run(cfg, rank, world_size)
        model = run.model.to(device)
        params = parameter_summary(model)
        log.info("model %s: %s parameters (%s)", cfg.model.name, f"{params['parameters']:,}", json.dumps(params))
        resume = ckpt.find_resume(run_dir)
        if cfg.init_from and resume is None:
            init_from_checkpoint(model, cfg.init_from)
        freeze_all_but(model, cfg.train_only)
        groups = build_param_groups(model, cfg.optimizer, cfg.lr_scheduler, cfg.clip_norm, cfg.param_groups)
        for group in groups:
            log.info("parameter group %s: %d tensors, optimizer %s", group.name, len(group.params), type(group.optimizer).__name__)
        wrap = (lambda m: comm.wrap_ddp(m, device, cfg.distributed)) if world_size > 1 else None
        trainer = Trainer(cfg, run.task, model, run.criterion, groups, device, run_dir, wrap)
        if resume is not None:
            trainer.load_state_dict(ckpt.load_checkpoint(resume))
            log.info("resumed from %s at step %d (epoch %d)", resume, trainer.step, trainer.epoch)
        try:
            code = trainer.train()
        except RuntimeError as error:
            if world_size == 1:
                raise
            # a collective failed: another rank died, or did not answer within distributed.timeout_s
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"error: rank {rank}: distributed training stopped: {first} (another rank died or timed out "
                  f"after {cfg.distributed.timeout_s}s)", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # the process group is broken: tearing it down, or exiting while gloo's threads still wait on the
            # dead peer, can abort the process (SIGABRT) instead of giving the documented exit code
            os._exit(DISTRIBUTED_EXIT)
        if code == 0 and cfg.final_subset:
            best = run_dir / ckpt.BEST
            if best.is_file():
                model.load_state_dict(ckpt.load_checkpoint(best)["model"])
            model.eval()
            metrics = run.task.evaluate(model, cfg.final_subset, device)
            metrics["checkpoint"] = str(best if best.is_file() else run_dir / ckpt.LAST)
            if rank == 0:
                print(json.dumps(metrics), flush=True)
        if code == 0 and rank == 0:
            report_run(run_dir, run.task, metrics if cfg.final_subset else None, time.perf_counter() - started)
        if world_size > 1:
            comm.barrier()  # leave together: a rank tearing down while a peer still talks to it can abort
        return code


def single_process_trainer(cfg: Any, run_dir: Path, device: torch.device = torch.device("cpu")) -> Trainer:
    """A Trainer for in-process use (benchmarks, tests): one process, no resume, no run files."""
    run = build_run(cfg)
    run.model.to(device).train()
    groups = build_param_groups(run.model, cfg.optimizer, cfg.lr_scheduler, cfg.clip_norm, cfg.param_groups)
    return Trainer(cfg, run.task, run.model, run.criterion, groups, device, Path(run_dir))
