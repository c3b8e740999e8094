"""The top-level training config. Component configs (task, model, ...) come from the registries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from toolkit.modules.memory_placement import MemoryPlacementConfig
from toolkit.train.global_batch import GlobalBatchConfig


@dataclass
class PhaseConfig:
    """One phase of a block-coordinate-descent cycle: which parameter groups train, for how long."""

    groups: List[str] = field(default_factory=list)  # names of param_groups ("main" = everything else)
    length: int = 1  # in `unit`s (updates or epochs)


@dataclass
class PhaseScheduleConfig:
    """Alternating phases (e.g. MAE's G/F steps). An empty cycle means every group trains at every step."""

    unit: str = "update"  # 'update' or 'epoch': what phase lengths count
    cycle: List[PhaseConfig] = field(default_factory=list)
    # what max_update counts: 'updates' (every update) or 'main_updates' (only updates that train group main, so
    # a BCD run gives its model as many updates as a run without phases; the gate-only updates come on top)
    budget: str = "updates"


@dataclass
class DistributedConfig:
    """torch.distributed settings (torchrun sets RANK/WORLD_SIZE; these are defaults and the launcher)."""

    world_size: int = 1  # >1 with plain tk-train: launch that many local processes through torchrun
    backend: str = "auto"  # 'auto' (nccl on cuda, gloo on cpu), 'nccl' or 'gloo'
    timeout_s: int = 300  # collective timeout: a dead rank makes the others fail after this long
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
    max_update: int = 1000  # stop after this many optimizer updates
    max_epoch: int = 0  # also stop after this many epochs (0 = no limit)
    seed: int = 1  # seeds torch, numpy, python and the data order
    device: str = "auto"  # 'cpu', 'cuda' or 'auto' (cuda when available)
    precision: str = "fp32"  # 'fp32', 'bf16' or 'fp16' (autocast; CUDA only, fp32 on CPU)
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    compile: bool = False  # torch.compile the model for training and evaluation (toolkit/train/compile.py)
    compile_backend: str = "inductor"  # 'inductor' (generated kernels), 'aot_eager' or 'eager' (tracing checks)
    dry_run: bool = False  # build task and model, print a summary and exit
    update_freq: int = 1  # gradient accumulation: micro-batches per update (derived when `batch` is set)
    batch: GlobalBatchConfig = field(default_factory=GlobalBatchConfig)  # batch per update over all processes
    clip_norm: float = 0.0  # global gradient-norm clipping of the main group (0 = off)
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    log_interval: int = 10  # updates between log lines
    validate_interval: int = 500  # updates between validations (0 = only at the end)
    save_interval: int = 500  # updates between checkpoint_last saves
    keep_interval_checkpoints: int = 0  # also keep checkpoint_<step>.pt, this many newest (0 = none)
    average_last_n: int = 0  # end by averaging the last N interval checkpoints into checkpoint_avg.pt, tested (0 = off)
    patience: int = 0  # stop after this many validations without improvement (0 = never)
    final_subset: Optional[str] = "test"  # subset scored after training (null = none)
    progress: str = "auto"  # 'auto' (bar on a terminal), 'bar' or 'plain'
    tensorboard: bool = True  # write tensorboard scalars under run_dir/tb
    init_from: Optional[str] = None  # fine-tuning: load model weights from this checkpoint (not when resuming)
    train_only: Optional[str] = None  # regex: train only matching parameters, freeze the rest (FTG, FTG+, ...)
    memory: MemoryPlacementConfig = field(default_factory=MemoryPlacementConfig)  # product-key memory layers
    param_groups: Dict[str, Any] = field(default_factory=dict)  # extra groups: {name: {params: REGEX, ...}}
    aux_weights: Dict[str, Any] = field(default_factory=dict)  # {aux_term: schedule} (see train/schedules.py)
    phases: PhaseScheduleConfig = field(default_factory=PhaseScheduleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)
