"""tk-train config=PRESET [key=value ...]: train a registered model on a registered task."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from typing import Optional, Sequence

from toolkit.cli.common import pop_config_name, run_cli

# Everything heavy (torch, Hydra, the registries) is imported inside the functions: main() installs the
# SIGTERM/SIGINT handler first, so a signal during start-up is one line and exit code 3, never a bare 143.

log = logging.getLogger("toolkit.train")

HELP = """usage: tk-train config=PRESET [key=value ...] [--cfg job]
       tk-train -m hydra/launcher=submitit_slurm config=PRESET [key=value,value ...] [hydra.launcher.KEY=...]

Train a registered model on a registered task. Short keys: data=DIR run_dir=DIR max_update=N seed=N
device=cpu|cuda|auto dry_run=true. Any config key can be set with dotted paths (model.n_layers=4).
  --cfg job     print the resolved config and exit
  dry_run=true  build task and model, print a summary (last line: JSON) and exit
  -m            run through a Hydra launcher: one job per sweep combination (docs/distributed.md)
"""


def print_help() -> None:
    from toolkit.config.compose import GROUPS, group_options, load_registries, presets
    from toolkit.config.preset_names import presets_by_folder, rename_table

    load_registries()
    print(HELP)
    print("config groups (choose with GROUP=NAME):")
    for group in GROUPS:
        print(f"  {group}: {', '.join(group_options(group))}")
    print("presets (config=FOLDER/NAME; more from folders named by $TOOLKIT_CONFIG_PATH, docs/presets.md):")
    for folder, names in presets_by_folder(presets()).items():
        print(f"  {folder}/: {', '.join(names)}" if folder else f"  {', '.join(names)}")
    print("renamed presets (the flat names of earlier releases still work):")
    print(textwrap.indent(rename_table(), "  "))


def _body(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from toolkit.cli.hydra_launch import launch as launch_with_hydra
    from toolkit.cli.hydra_launch import wants_hydra
    from toolkit.config.compose import compose_train_config

    if any(a in ("-h", "--help") for a in args):
        print_help()
        return 0
    if wants_hydra(args):  # --multirun / hydra/launcher=...: jobs through a Hydra launcher (Slurm)
        return launch_with_hydra(args)
    show_config = False
    if "--cfg" in args:
        i = args.index("--cfg")
        show_config = True
        del args[i : i + 2]
    original = list(args)
    preset = pop_config_name(args)
    cfg = compose_train_config(preset, args)
    if show_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    from toolkit.config.validate import check_run
    from toolkit.distributed.launch import launch_local, under_torchrun
    from toolkit.train.averaging import check_averaging
    from toolkit.train.global_batch import check_global_batch
    from toolkit.train.run import dry_run, train

    task, model = check_run(
        cfg, training=not cfg.dry_run
    )  # data, run folder, task and model: before anything is written
    check_averaging(cfg)
    check_global_batch(cfg, int(os.environ.get("WORLD_SIZE", cfg.distributed.world_size)))
    if cfg.distributed.world_size > 1 and not cfg.dry_run and not under_torchrun():
        from pathlib import Path

        from toolkit.train.run_lock import RunFolderLock
        from toolkit.train.start_check import check_start_state

        # a busy run folder, a checkpoint that cannot be read or does not fit: one line here, not N ranks
        # failing under torchrun
        with RunFolderLock(Path(cfg.run_dir)):
            check_start_state(cfg, task, model)
        return launch_local(cfg.distributed.world_size, original)

    if cfg.dry_run:
        summary = dry_run(cfg)
        print(json.dumps(summary))
        return 0
    return train(cfg, preset, list(sys.argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from toolkit.errors import INTERRUPTED_EXIT
    from toolkit.train.signals import Interrupted, signals_raise_interrupted

    # outside the update loop (start-up, final evaluation) SIGTERM/SIGINT stop at once with exit code 3; the
    # run folder is only written once everything is checked, and atomically, so nothing is left half-done
    with signals_raise_interrupted():
        try:
            return run_cli(_body, argv)
        except Interrupted as stop:
            print(f"error: {stop.message()}", file=sys.stderr, flush=True)
            return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
