"""tk-eval checkpoint=PATH [subset=test] [task.KEY=VALUE ...]: score a checkpoint with its task's metric.

The checkpoint carries its training config; `task.*` (and `data=`, `device=`) overrides change how it is
evaluated (e.g. task.eval_window=512 task.eval_stride=1 for the exact char-LM protocol). The last stdout line
is one JSON object with the metrics.

`save_nll=FILE` (language models) also writes each scored target's NLL, for `tk-eval nll=A baseline_nll=B`.
`tk-eval hypotheses=FILE references=FILE [baseline=FILE]` and `tk-eval nll=A baseline_nll=B` score files
instead of a checkpoint (toolkit.cli.score_files).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from omegaconf import MISSING, OmegaConf

from toolkit.cli.common import run_cli
from toolkit.config.choices import CompileBackend, Device
from toolkit.config.cli_overrides import apply_overrides, check_complete, split_overrides

PASSTHROUGH = ("task.", "model.")  # keys applied to the checkpoint's own training config


@dataclass
class EvalConfig:
    checkpoint: str = MISSING  # path to a checkpoint written by tk-train
    subset: str = "test"  # split to score: train, valid or test
    data: Optional[str] = None  # dataset folder (default: the one the checkpoint was trained on)
    device: Device = Device.auto  # cpu, cuda or auto
    results: Optional[str] = None  # also write the JSON metrics to this file
    save_nll: Optional[str] = (
        None  # LMs: write each scored target's NLL (nats) here (.npy), for tk-eval nll=A baseline_nll=B
    )
    compile: bool = False  # torch.compile the model (toolkit/train/compile.py)
    compile_backend: CompileBackend = CompileBackend.inductor  # 'inductor', 'aot_eager' or 'eager'


def _body(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    from toolkit.cli.score_files import check_token_nll, save_token_nll, score_files, wants_file_scoring

    if wants_file_scoring(args):  # hypotheses= / nll=: score files, no checkpoint
        return score_files(args)
    from toolkit.cli.outputs import check_output_file
    from toolkit.data.atomic import atomic_write_bytes
    from toolkit.train.compile import compile_model
    from toolkit.train.trained_run import load_trained_run

    pairs = split_overrides(args)
    own = [(k, v) for k, v in pairs if not k.startswith(PASSTHROUGH)]
    passthrough = [(k, v) for k, v in pairs if k.startswith(PASSTHROUGH)]
    cfg = OmegaConf.structured(EvalConfig)
    apply_overrides(cfg, own)
    check_complete(cfg)
    if cfg.results:
        check_output_file(cfg.results, "results")

    run = load_trained_run(cfg.checkpoint, passthrough, cfg.data, cfg.device)
    model, device = run.model, run.device
    if cfg.compile:
        compile_model(model, cfg.compile_backend)
    check_token_nll(run.task, cfg.save_nll)
    run.task.record_token_nll = cfg.save_nll is not None
    metrics = run.task.evaluate(model, cfg.subset, device)
    if cfg.save_nll:
        metrics["nll_file"] = save_token_nll(run.task, cfg.save_nll)
    metrics.update(model.memory_metrics())  # product-key memory usage and KL from uniform (if the model has any)
    metrics["checkpoint"] = cfg.checkpoint
    metrics["step"] = run.checkpoint.step
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
