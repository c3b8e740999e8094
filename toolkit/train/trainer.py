"""The training loop: updates, validation, checkpoints, logging, signals.

One update = `update_freq` micro-batches. Gradients are sums over tokens, divided once by the update's total
sample size (all-reduced under DDP), so accumulation and data parallelism equal one large batch.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from toolkit.aux_weights import active_aux_terms
from toolkit.distributed import comm
from toolkit.errors import DIVERGED_EXIT, INTERRUPTED_EXIT
from toolkit.logging.progress import Progress, format_metrics
from toolkit.logging.tensorboard import Scalars
from toolkit.logging.token_metrics import summarize
from toolkit.models.base import ToolkitModel
from toolkit.tasks.base import Task, to_device
from toolkit.train import checkpoint as ckpt
from toolkit.train.flops import throughput_metrics, train_flops_per_token
from toolkit.train.param_groups import ParamGroup
from toolkit.train.precision import autocast, grad_scaler
from toolkit.train.schedules import active_groups, validate_phases
from toolkit.train.signals import StopRequest
from toolkit.train.stacked_optimizer_state import stack_separate_projection_states

log = logging.getLogger(__name__)

SUMMED_LOGS = ("loss", "nll_loss", "ntokens")
# checkpoint_last.pt is only replaced by a sane state: the last update's loss finite, every weight finite, every
# validation since the previous save finite, and the loss of the weights being saved on the last training batch
# (eval mode) at most this factor above that same batch's loss before the update. A training loss describes the
# weights before its update, so it cannot tell whether the update just made blew them up (lr=1e10: weights in
# the 1e8s after one update); this check forward can, and comparing one batch with itself is free of the noise
# between batches. A diverging run thus keeps its last good state, which the exit-4 error line names. The factor
# is the config's checkpoint_sanity_factor.


def prediction_loss(logs: Dict[str, Any]) -> Any:
    """The summed prediction loss of a criterion's logs: the NLL without label smoothing when it reports one."""
    return logs["nll_loss" if "nll_loss" in logs else "loss"]


class Trainer:
    def __init__(
        self,
        cfg: Any,
        task: Task,
        model: ToolkitModel,
        criterion: Any,
        groups: List[ParamGroup],
        device: torch.device,
        run_dir: Path,
        wrap_ddp: Optional[Callable[[nn.Module], nn.Module]] = None,
    ):
        self.cfg, self.task, self.model, self.criterion = cfg, task, model, criterion
        self.wrap_ddp = wrap_ddp  # rebuilds DistributedDataParallel when the set of trained parameters changes
        self.forward_model: nn.Module = model  # what computes the loss: the model, or its DDP wrapper
        self.groups = {g.name: g for g in groups}
        self.device, self.run_dir = device, run_dir
        self.is_main = comm.rank() == 0
        self.scaler = grad_scaler(cfg.precision, device)
        validate_phases(cfg.phases, list(self.groups))
        self.step, self.epoch, self.index = 0, 1, 0
        self.main_updates = 0  # updates that trained group main (phases.budget=main_updates counts these)
        self.best: Optional[float] = None
        self.bad_validations = 0
        self.nonfinite_in_row = self.nonfinite_total = 0
        self.last_batch: Optional[Dict[str, Any]] = None  # the last micro-batch trained on (for the check)
        self.last_batch_loss = 0.0  # its summed loss before the update
        self.valid_finite = True  # every validation since the last save was finite
        self.last_good_step: Optional[int] = None  # step held by checkpoint_last.pt (None: none written)
        self.graph_signature: Optional[tuple] = None  # (active groups, active aux terms)
        self.tb = Scalars(run_dir / "tb", False)  # opened by train(): nothing is written before the run starts
        self.metrics_log = run_dir / "train_log.jsonl"
        self.seq_len = 0  # target length of the last batch: the attention term of the FLOPs estimate

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {name: g.optimizer.state_dict() for name, g in self.groups.items()},
            "scaler": self.scaler.state_dict(),
            "rng": comm.gather_objects(ckpt.rng_state()),
            "position": {"step": self.step, "epoch": self.epoch, "index": self.index},
            "task": comm.gather_objects(self.task.state_dict()),
            "trainer": {
                "best": self.best,
                "bad_validations": self.bad_validations,
                "nonfinite_total": self.nonfinite_total,
                "main_updates": self.main_updates,
                "world_size": comm.world_size(),
            },
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),  # plain data: weights_only
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        optimizers = stack_separate_projection_states(
            self.model, state["model"], {name: g.names for name, g in self.groups.items()}, state["optimizers"]
        )
        for name, group in self.groups.items():
            if name in optimizers:
                group.optimizer.load_state_dict(optimizers[name])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.index = (state["position"][k] for k in ("step", "epoch", "index"))
        trainer = state["trainer"]
        self.best, self.bad_validations = trainer["best"], trainer["bad_validations"]
        self.nonfinite_total = trainer["nonfinite_total"]
        self.last_good_step = self.step
        self.main_updates = trainer.get("main_updates", self.step)
        saved_world = trainer.get("world_size", 1)
        rank = comm.rank()
        if saved_world == comm.world_size():
            ckpt.set_rng_state(state["rng"][rank])
            self.task.load_state_dict(state["task"][rank])
        else:
            log.warning(
                "resuming a run saved with world_size=%d on world_size=%d: the data order continues from the "
                "same position with the new sharding, and RNG streams restart from rank 0's; the run is not "
                "bit-identical to an uninterrupted one",
                saved_world,
                comm.world_size(),
            )
            ckpt.set_rng_state(state["rng"][0])

    def save(self, name: str) -> None:
        state = self.state_dict()  # collective (gathers every rank's RNG): all ranks call it
        if self.is_main:
            ckpt.save_checkpoint(state, self.run_dir / name)

    @torch.no_grad()
    def _check_losses(self) -> Optional[tuple[float, float]]:
        """Per-token loss of the last training batch before its update and with the current weights (eval
        mode), summed over ranks. Uses no random numbers and puts back the task's stream state, so that
        training goes on unchanged."""
        if self.last_batch is None:
            return None
        stream = self.task.state_dict()
        self.model.eval()
        with self.model.uncounted(), autocast(self.cfg.precision, self.device):
            _, _, logs = self.criterion(self.model, self.last_batch, self.step)
        self.model.train()
        self.task.load_state_dict(stream)
        summed = comm.all_reduce_sums(
            {"before": self.last_batch_loss, "after": float(prediction_loss(logs)), "ntokens": float(logs["ntokens"])}
        )
        tokens = max(summed["ntokens"], 1.0)
        return summed["before"] / tokens, summed["after"] / tokens

    def insane_reason(self) -> Optional[str]:
        """Why the current state must not replace checkpoint_last.pt (None: it is sane). Same on every rank."""
        if self.nonfinite_in_row:
            return "the last update's loss was not finite"
        if not self.valid_finite:
            return "a validation since the last save was not finite"
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return "some weights are not finite"
        losses = self._check_losses()
        if losses is None:
            return None
        before, after = losses
        if not math.isfinite(after):
            return f"the loss of these weights on the last batch is {after}"
        factor = float(self.cfg.get("checkpoint_sanity_factor", 2.0))
        if after > factor * before:
            return (
                f"the loss of these weights on the last batch is {after:.4g} per token, over "
                f"{factor:g}x its {before:.4g} before the update (checkpoint_sanity_factor)"
            )
        return None

    def save_last(self, progress: Progress, interval: bool = False) -> bool:
        """Write checkpoint_last.pt (and checkpoint_<step>.pt when `interval`) if the state is sane."""
        reason = self.insane_reason()
        self.valid_finite = True
        if reason is not None:
            kept = f"it keeps step {self.last_good_step}" if self.last_good_step is not None else "none is written"
            progress.write(f"step={self.step} not saving {ckpt.LAST}: {reason}; {kept}")
            return False
        self.save(ckpt.LAST)
        self.last_good_step = self.step
        if interval and self.cfg.keep_interval_checkpoints > 0:
            self.save(f"checkpoint_{self.step}.pt")
            if self.is_main:
                ckpt.prune_interval_checkpoints(self.run_dir, self.cfg.keep_interval_checkpoints)
        return True

    def divergence_message(self, count: int) -> str:
        if self.last_good_step is None:
            kept = "no checkpoint holds a sane state: the run diverged before its first save"
        else:
            kept = f"last good checkpoint: {self.run_dir / ckpt.LAST} (step {self.last_good_step})"
        return f"error: {count} non-finite losses in a row at step {self.step}; stopping ({kept})"

    # ---- one update ----------------------------------------------------------------------------------
    def _set_trainable(self) -> List[ParamGroup]:
        """Freeze what this step does not train; rebuild DDP when that set changes.

        Groups outside the current block-coordinate-descent phase, and the parameters of auxiliary terms whose
        weight is 0 now (the model's `aux_term_parameters(name)`), get requires_grad=False: no
        gradient work, no optimizer step. DDP is rebuilt over the parameters that do train, so no parameter is
        ever "unused" in a step (no hang, no find_unused_parameters cost).
        """
        active = tuple(active_groups(self.cfg.phases, self.step, self.epoch, list(self.groups)))
        aux_names = self.model.aux_term_names()
        aux_on = (
            frozenset(active_aux_terms(aux_names, self.criterion.aux_weights, self.step)) if aux_names else frozenset()
        )
        signature = (active, aux_on)
        if signature != self.graph_signature:
            for name, group in self.groups.items():
                for param in group.params:
                    param.requires_grad_(name in active)
            for term in aux_names:
                if term not in aux_on:
                    for param in self.model.aux_term_parameters(term):
                        param.requires_grad_(False)
            if self.graph_signature is not None:
                log.info(
                    "step %d: training groups %s; auxiliary terms on: %s",
                    self.step,
                    ", ".join(active),
                    ", ".join(sorted(aux_on)) or "none",
                )
            if self.wrap_ddp is not None:
                self.forward_model = self.wrap_ddp(self.model)
            self.graph_signature = signature
        return [self.groups[name] for name in active]

    def _next_position(self) -> None:
        self.index += 1
        if self.index >= self.task.epoch_length(self.epoch):
            self.epoch, self.index = self.epoch + 1, 0

    def train_step(self) -> Optional[Dict[str, float]]:
        """Run one update; returns its summed logs, or None when skipped for a non-finite loss."""
        groups = self._set_trainable()
        summed: Dict[str, float] = {k: 0.0 for k in SUMMED_LOGS}
        latest: Dict[str, float] = {}
        for micro in range(self.cfg.update_freq):
            batch = to_device(self.task.train_batch(self.epoch, self.index), self.device)
            self.seq_len = int(batch["target"].size(-1))
            self.last_batch = batch
            self._next_position()
            last = micro == self.cfg.update_freq - 1
            with comm.maybe_no_sync(self.forward_model, skip=not last), autocast(self.cfg.precision, self.device):
                loss, _, logs = self.criterion(self.forward_model, batch, self.step)  # sample size is logs["ntokens"]
                self.last_batch_loss = prediction_loss(logs)
                self.scaler.scale(loss).backward()
            for key, value in logs.items():
                if key in summed:
                    summed[key] += value
                else:
                    latest[key] = value
        summed = comm.all_reduce_sums(summed)
        params = [p for g in groups for p in g.params if p.grad is not None]
        if not math.isfinite(summed["loss"]):
            for g in groups:
                g.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            return None
        self.nonfinite_in_row = 0
        for group in groups:
            self.scaler.unscale_(group.optimizer)
        # DDP averaged gradients over ranks; turn the sum over this update's tokens into a mean
        scale = comm.world_size() / max(summed["ntokens"], 1)
        torch._foreach_mul_([p.grad for p in params if not p.grad.is_sparse], scale)
        for p in params:
            if p.grad.is_sparse:
                p.grad.mul_(scale)
        for group in groups:
            group.set_lr(self.step, self.cfg.max_update)
            clip = self.cfg.clip_norm if group.name == "main" else group.clip_norm
            if clip > 0:
                latest[f"gnorm/{group.name}"] = float(
                    torch.nn.utils.clip_grad_norm_([p for p in group.params if p.grad is not None], clip)
                )
            self.scaler.step(group.optimizer)
            group.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.model.after_update()  # e.g. clamp adaptive spans into range
        self.step += 1
        self.main_updates += any(g.name == "main" for g in groups)
        summed.update(latest)
        return summed

    # ---- the loop ------------------------------------------------------------------------------------
    def _done(self) -> bool:
        budget_used = self.main_updates if self.cfg.phases.get("budget") == "main_updates" else self.step
        if budget_used >= self.cfg.max_update:
            return True
        return bool(self.cfg.max_epoch) and self.epoch > self.cfg.max_epoch

    def validate(self) -> Dict[str, Any]:
        self.model.eval()
        metrics = self.task.evaluate(self.model, "valid", self.device, during_training=True)
        # product-key memory usage over the validation reads, so that the next training row counts training
        # reads only (and a run resumed after a validation logs what the uninterrupted run logs)
        metrics.update(self.model.memory_metrics())
        self.model.train()
        return metrics

    def _log(self, kind: str, metrics: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        self.tb.add(kind, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, self.step)
        with open(self.metrics_log, "a") as handle:
            handle.write(json.dumps({"kind": kind, "step": self.step, **metrics}) + "\n")

    def train(self) -> int:
        """Train until max_update/max_epoch, patience, a signal or divergence; returns the exit code."""
        stop = StopRequest().install()
        progress = Progress(self.cfg.max_update, self.step, self.cfg.progress, enabled=self.is_main)
        self.tb = Scalars(self.run_dir / "tb", self.cfg.tensorboard and self.is_main)
        self.model.train()
        window: Dict[str, float] = {}
        tokens_since, clock = 0, time.perf_counter()
        try:
            while not self._done():
                logs = self.train_step()
                if logs is None:
                    progress.write(
                        f"step={self.step} non-finite loss, update skipped ({self.nonfinite_in_row} in a row)"
                    )
                    if self.nonfinite_in_row >= self.cfg.max_nonfinite:
                        if self.is_main:
                            progress.close()
                            print(self.divergence_message(self.nonfinite_in_row), file=sys.stderr, flush=True)
                        return DIVERGED_EXIT
                    continue
                for key, value in logs.items():
                    window[key] = window.get(key, 0.0) + value if key in SUMMED_LOGS else value
                tokens_since += int(logs["ntokens"])
                if self.step % self.cfg.log_interval == 0 or self._done():
                    elapsed = time.perf_counter() - clock
                    metrics = summarize(window)
                    metrics.update({k: v for k, v in window.items() if k not in SUMMED_LOGS})
                    metrics.update(
                        {
                            "lr": self.groups["main"].optimizer.param_groups[0]["lr"] if "main" in self.groups else 0.0,
                            "tokens_per_s": tokens_since / max(elapsed, 1e-9),
                            "tokens": tokens_since,  # summed by the end-of-training summary
                            "epoch": self.epoch,
                            "nonfinite": self.nonfinite_total,
                        }
                    )
                    # model FLOPs (6N + attention, at the current spans) -> TFLOP/s, and MFU on a known GPU
                    flops = train_flops_per_token(self.model, self.seq_len)
                    metrics.update(throughput_metrics(flops, metrics["tokens_per_s"], comm.world_size(), self.device))
                    # e.g. learned spans per layer and head, product-key memory usage since the last log
                    metrics.update(self.model.metrics())
                    self._log("train", metrics)
                    progress.update(
                        self.step,
                        {k: metrics[k] for k in ("loss", self.task.valid_metric, "lr", "tokens_per_s") if k in metrics},
                    )
                    window, tokens_since, clock = {}, 0, time.perf_counter()
                should_stop = self._after_update(progress)
                if comm.any_rank(stop.requested):
                    saved = self.save_last(progress)
                    where = f"saved {self.run_dir / ckpt.LAST}" if saved else f"{ckpt.LAST} not replaced"
                    progress.write(f"stopped by signal at step {self.step}; {where}")
                    return INTERRUPTED_EXIT
                if should_stop:
                    break
            if self.cfg.validate_interval == 0 or self.step % self.cfg.validate_interval:
                self._validate_and_keep_best(progress)
            self.save_last(progress)
            return 0
        finally:
            stop.restore()
            progress.close()
            self.tb.close()

    def _after_update(self, progress: Progress) -> bool:
        """Validation, checkpoints, early stopping after an update; True when patience ran out."""
        stop = False
        if self.cfg.validate_interval and self.step % self.cfg.validate_interval == 0:
            stop = self._validate_and_keep_best(progress)
        if self.cfg.save_interval and self.step % self.cfg.save_interval == 0:
            self.save_last(progress, interval=True)
        return stop

    def _validate_and_keep_best(self, progress: Progress) -> bool:
        metrics = self.validate()
        value = metrics[self.task.valid_metric]
        finite = math.isfinite(value)
        self.valid_finite = self.valid_finite and finite
        improved = finite and (self.best is None or value < self.best)
        if improved:
            self.best, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
        metrics["best"] = self.best
        self._log("valid", metrics)
        progress.write(f"valid step={self.step} {format_metrics(metrics)}")
        if improved:
            self.save(ckpt.BEST)
        if self.cfg.patience and self.bad_validations >= self.cfg.patience:
            progress.write(f"early stop: no improvement in {self.cfg.patience} validations")
            return True
        return False
