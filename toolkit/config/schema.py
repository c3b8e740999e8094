"""The top-level training config. Component configs (task, model, ...) come from the registries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from toolkit.aux_weights import WeightScheduleConfig
from toolkit.config.choices import Backend, CompileBackend, Device, PhaseBudget, PhaseUnit, Precision, Progress, Subset
from toolkit.config.ranges import bounded
from toolkit.train.global_batch import GlobalBatchConfig


@dataclass
class PhaseConfig:
    """One phase of a block-coordinate-descent cycle: which parameter groups train, for how long."""

    groups: List[str] = field(default_factory=list)  # names of param_groups ("main" = everything else)
    length: int = bounded(1, ge=1)  # in `unit`s (updates or epochs)


@dataclass
class PhaseScheduleConfig:
    """Alternating phases (e.g. MAE's G/F steps). An empty cycle means every group trains at every step."""

    unit: PhaseUnit = PhaseUnit.update  # what phase lengths count: updates or epochs
    cycle: List[PhaseConfig] = field(default_factory=list)
    # what max_update counts: 'updates' (every update) or 'main_updates' (only updates that train group main, so
    # a BCD run gives its model as many updates as a run without phases; the gate-only updates come on top)
    budget: PhaseBudget = PhaseBudget.updates


@dataclass
class DistributedConfig:
    """torch.distributed settings (torchrun sets RANK/WORLD_SIZE; these are defaults and the launcher)."""

    world_size: int = bounded(1, ge=1)  # >1 with plain tk-train: launch that many local processes through torchrun
    backend: Backend = Backend.auto  # nccl on cuda, gloo on cpu (auto), or as named
    timeout_s: int = bounded(300, ge=1)  # collective timeout: a dead rank makes the others fail after this long
    find_unused_parameters: bool = False  # needed when some parameters skip the graph in some steps


@dataclass
class TrainConfig:
    """Everything `tk-train` needs. Short top-level keys are the ones typed most often."""

    task: Any = MISSING  # task config (group `task`)
    model: Any = MISSING  # model config (group `model`)
    criterion: Any = MISSING  # criterion config (group `criterion`)
    optimizer: Any = MISSING  # optimizer of the `main` parameter group (group `optimizer`)
    lr_scheduler: Any = MISSING  # lr schedule of the `main` group (group `lr_scheduler`)

    data: Optional[str] = None  # prepared dataset folder (tk-preprocess destdir)
    run_dir: str = "runs/default"  # logs, checkpoints, resolved config
    max_update: int = bounded(1000, ge=1)  # stop after this many optimizer updates
    max_epoch: int = bounded(0, ge=0)  # also stop after this many epochs (0 = no limit)
    seed: int = bounded(1, ge=0)  # seeds torch, numpy, python and the data order
    device: Device = Device.auto  # cpu, cuda or auto (cuda when available)
    precision: Precision = Precision.fp32  # fp32, bf16 or fp16 (autocast; CUDA only, fp32 on CPU)
    threads: int = bounded(0, ge=0)  # torch intra-op threads on CPU (0 = torch's default)
    compile: bool = False  # torch.compile the model for training and evaluation (toolkit/train/compile.py)
    compile_backend: CompileBackend = (
        CompileBackend.inductor
    )  # 'inductor' (generated kernels), 'aot_eager' or 'eager' (tracing checks)
    dry_run: bool = False  # build task and model, print a summary and exit
    update_freq: int = bounded(1, ge=1)  # gradient accumulation: micro-batches per update (derived when `batch` is set)
    batch: GlobalBatchConfig = field(default_factory=GlobalBatchConfig)  # batch per update over all processes
    clip_norm: float = bounded(0.0, ge=0)  # global gradient-norm clipping of the main group (0 = off)
    max_nonfinite: int = bounded(5, ge=1)  # stop after this many non-finite losses in a row
    log_interval: int = bounded(10, ge=1)  # updates between log lines
    validate_interval: int = bounded(500, ge=0)  # updates between validations (0 = only at the end)
    save_interval: int = bounded(500, ge=0)  # updates between checkpoint_last saves
    keep_interval_checkpoints: int = bounded(0, ge=0)  # also keep checkpoint_<step>.pt, this many newest (0 = none)
    average_last_n: int = bounded(
        0, ge=0
    )  # end by averaging the last N interval checkpoints into checkpoint_avg.pt, tested (0 = off)
    patience: int = bounded(0, ge=0)  # stop after this many validations without improvement (0 = never)
    final_subset: Optional[Subset] = Subset.test  # subset scored after training (null = none)
    progress: Progress = Progress.auto  # auto (bar on a terminal), bar or plain
    tensorboard: bool = True  # write tensorboard scalars under run_dir/tb
    init_from: Optional[str] = None  # fine-tuning: load model weights from this checkpoint (not when resuming)
    # init_from is refused when its weights cover less than this share of the model's parameter values (a
    # checkpoint of another model or task would otherwise initialise almost nothing)
    init_from_min_fraction: float = bounded(0.5, ge=0, le=1)
    # checkpoint_last.pt is only replaced when the saved weights' loss on the last batch is at most this factor
    # times that batch's loss before the update (.inf: no such check; see docs/safety.md)
    checkpoint_sanity_factor: float = bounded(2.0, ge=1)
    train_only: Optional[str] = None  # regex: train only matching parameters, freeze the rest (FTG, FTG+, ...)
    param_groups: Dict[str, Any] = field(default_factory=dict)  # extra groups: {name: {params: REGEX, ...}}
    aux_weights: Dict[str, Any] = field(default_factory=dict)  # {aux_term: schedule} (see toolkit/aux_weights.py)
    # one schedule for every intermediate-layer term layer_{l}_nll: layer l of model.n_layers ends at
    # end_fraction * l / n of max_update (T64's rule; toolkit/aux_layer_weights.py); null = none
    aux_layer_weights: Optional[WeightScheduleConfig] = None
    phases: PhaseScheduleConfig = field(default_factory=PhaseScheduleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
