"""tk-eval checkpoint=PATH [subset=test] [task.KEY=VALUE ...]: score a checkpoint with its task's metric.

The checkpoint carries its training config; `task.*` (and `data=`, `device=`) overrides change how it is
evaluated (e.g. task.eval_window=512 task.eval_stride=1 for the exact char-LM protocol). The last stdout line
is one JSON object with the metrics.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from omegaconf import MISSING, OmegaConf

from toolkit.cli.common import run_cli
from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides
from toolkit.errors import ConfigError

PASSTHROUGH = ("task.", "model.")  # keys applied to the checkpoint's own training config


@dataclass
class EvalConfig:
    checkpoint: str = MISSING  # path to a checkpoint written by tk-train
    subset: str = "test"  # split to score: train, valid or test
    data: Optional[str] = None  # dataset folder (default: the one the checkpoint was trained on)
    device: str = "auto"  # cpu, cuda or auto
    results: Optional[str] = None  # also write the JSON metrics to this file


def _body(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from toolkit.config.compose import load_registries, typed_train_config
    from toolkit.config.validate import validate_train_config
    from toolkit.modules.memory_placement import UsageMonitor
    from toolkit.data.atomic import atomic_write_bytes
    from toolkit.train import checkpoint as ckpt
    from toolkit.train.setup import build_run, resolve_device

    pairs = split_overrides(args)
    own = [(k, v) for k, v in pairs if not k.startswith(PASSTHROUGH)]
    passthrough = [(k, v) for k, v in pairs if k.startswith(PASSTHROUGH)]
    cfg = OmegaConf.structured(EvalConfig)
    apply_overrides(cfg, own)
    check_complete(cfg)

    load_registries()
    state = ckpt.load_checkpoint(cfg.checkpoint)
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{cfg.checkpoint} is not a tk-train checkpoint (no config/model inside)")
    train_cfg = typed_train_config(state["config"])  # typed: task.KEY=... is checked as in tk-train
    apply_overrides(train_cfg, passthrough)
    validate_train_config(train_cfg)
    if cfg.data is not None:
        train_cfg.data = cfg.data
    device = resolve_device(cfg.device)
    run = build_run(train_cfg)
    model = run.model.to(device)
    model.load_state_dict(state["model"])
    model.eval()
    memories = UsageMonitor(model)
    metrics = run.task.evaluate(model, cfg.subset, device)
    metrics.update(memories.report())  # product-key memory usage and KL from uniform (if the model has any)
    metrics["checkpoint"] = cfg.checkpoint
    metrics["step"] = state.get("position", {}).get("step")
    for key, value in metrics.items():
        print(f"{key}: {value}")
    line = json.dumps(metrics)
    if cfg.results:
        atomic_write_bytes(cfg.results, (line + "\n").encode())
    print(line)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(_body, argv)


if __name__ == "__main__":
    sys.exit(main())
