"""Compose the training config: train.yaml + a preset (`config=NAME`) + command-line overrides.

Hydra composes the defaults (config groups backed by the registries' dataclasses, presets in
toolkit/configs/config/FOLDER/NAME.yaml and in the folders named by $TOOLKIT_CONFIG_PATH); plain `key=value`
overrides are then applied with OmegaConf so that every error names the key in one line (unknown key with close
matches, wrong type, missing value).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from toolkit.aux_layer_weights import upgrade_per_layer_entries
from toolkit.config.cli_overrides import apply_overrides, check_complete, explain, split_overrides
from toolkit.config.moved_keys import check_override_key, moved_to, upgrade_saved_config
from toolkit.config.preset_names import RENAMED, register_old_names
from toolkit.config.validate import validate_train_config
from toolkit.errors import ConfigError, close_matches
from toolkit.registry import CRITERIONS, LR_SCHEDULERS, MODELS, OPTIMIZERS, TASKS, Registry

GROUPS: dict[str, Registry] = {
    "task": TASKS,
    "model": MODELS,
    "criterion": CRITERIONS,
    "optimizer": OPTIMIZERS,
    "lr_scheduler": LR_SCHEDULERS,
}

OPEN_MAPPINGS = ("param_groups", "aux_weights")


USER_CONFIG_PATH = "TOOLKIT_CONFIG_PATH"  # the user's own config folders, os.pathsep-separated


def config_dir() -> Path:
    """The shipped configs: toolkit/configs/ inside the package (or $TOOLKIT_CONFIG_DIR, which replaces it)."""
    env = os.environ.get("TOOLKIT_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def user_config_dirs() -> list[Path]:
    """The folders of $TOOLKIT_CONFIG_PATH, each laid out like toolkit/configs/ (presets in DIR/config/)."""
    folders = []
    for entry in os.environ.get(USER_CONFIG_PATH, "").split(os.pathsep):
        if not entry:
            continue
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"{USER_CONFIG_PATH}={entry}: no such folder")
        if not any((folder / sub).is_dir() for sub in ("config", *GROUPS)):
            raise ConfigError(
                f"{USER_CONFIG_PATH}={entry}: no config/ folder in it (presets go in {folder / 'config'}/NAME.yaml)"
            )
        if "'" in str(folder):
            raise ConfigError(f"{USER_CONFIG_PATH}={entry}: a folder name with a quote (') is not supported")
        folders.append(folder)
    return folders


def config_roots() -> list[Path]:
    """Where Hydra looks, in order: the shipped configs, then the user's folders."""
    return [config_dir(), *user_config_dirs()]


def search_path_overrides() -> list[str]:
    """Hydra's override that adds the user's folders to its search path (none without $TOOLKIT_CONFIG_PATH)."""
    folders = user_config_dirs()
    if not folders:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{folder}'" for folder in folders) + "]"]


def preset_files(root: Path) -> dict[str, Path]:
    """{NAME: file} for the presets under ROOT/config/ (NAME is FOLDER/FILE without .yaml; files and folders
    whose name starts with '_' are shared bases, not presets)."""
    base = root / "config"
    files = {}
    for path in sorted(base.rglob("*.yaml")):
        relative = path.relative_to(base).with_suffix("")
        if not any(part.startswith("_") for part in relative.parts):
            files[relative.as_posix()] = path
    return files


def load_registries() -> None:
    """Import every component so its registration (and ConfigStore entry) exists."""
    import toolkit.config.schema  # noqa: F401
    import toolkit.train.lr_schedulers  # noqa: F401
    import toolkit.train.optimizers  # noqa: F401
    from toolkit import criterions, models, tasks

    for package in (models, tasks, criterions):
        package.load_all()
    register_old_names()


def group_options(group: str) -> list[str]:
    """A group's choices: the registered components plus YAML variants in configs/GROUP/ (e.g. transformer_base)."""
    files = [p.stem for root in config_roots() for p in (root / group).glob("*.yaml")]
    return sorted(set(GROUPS[group].names()) | set(files))


def presets() -> list[str]:
    """The presets' names (FOLDER/NAME): the shipped ones and the user's; a user's preset may not take the
    name of a shipped one or of an old name (Hydra would read the shipped one)."""
    shipped = preset_files(config_dir())
    names = set(shipped)
    for root in user_config_dirs():
        for name, path in preset_files(root).items():
            if name in shipped or name in RENAMED:
                taken = "a shipped preset's name" if name in shipped else f"the old name of {RENAMED[name]}"
                raise ConfigError(f"{path}: config={name} is {taken}; rename the file")
            names.add(name)
    return sorted(names)


def check_preset(name: str | None) -> str:
    """The preset's name as given, when it is one (today's names and the old flat ones)."""
    valid = presets()
    if name is None or name == "":
        raise ConfigError(f"no config given: pass config=NAME, one of: {', '.join(valid)}")
    if name not in valid and name not in RENAMED:
        matches = close_matches(name, valid) or close_matches(name, RENAMED)
        raise ConfigError(f"unknown config '{name}'{matches}; valid: {', '.join(valid)}")
    return name


def describe_composition_error(text: str) -> str:
    """One line from Hydra's multi-line composition error: the problem and the key it names."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    problem = next(
        (line for line in lines[1:] if not line.startswith(("full_key:", "object_type"))), lines[0] if lines else text
    )
    if key and "not in" in problem and moved_to(key):
        return f"the top-level key '{key}' is now {moved_to(key)} (move it there)"
    if key and "not in" in problem:
        return f"unknown key '{key}' ({problem}; did the preset set it for another {key.split('.')[0]} choice?)"
    return f"{problem} (key '{key}')" if key else problem


def describe_missing_option(text: str) -> str:
    """One line for a defaults entry naming a group option or preset that does not exist."""
    where = re.match(r"In '([^']+)'", text)
    missing = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if missing is None:
        return describe_composition_error(text)
    group, _, option = missing.group(1).rpartition("/")
    if group == "config" or group.startswith("config/"):  # a preset, by its name under config/
        option = missing.group(1).split("/", 1)[1]
        group, valid, known = "config", presets(), [*presets(), *RENAMED]
    else:
        valid = known = group_options(group) if group in GROUPS else []
    place = f"{config_file(where.group(1))} selects " if where and where.group(1) != "train" else ""
    listing = f"{close_matches(option, known)}; valid: {', '.join(valid)}" if valid else ""
    return f"{place}unknown {group or 'config'} '{option}'{listing}"


def config_file(name: str) -> Path:
    """The file Hydra read for config NAME (e.g. config/mae/base_wmt14): the first root that has it."""
    paths = [root / f"{name}.yaml" for root in config_roots()]
    return next((path for path in paths if path.is_file()), paths[0])


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """'FILE, line N: problem' for a config file that is not valid YAML (a tab, an unclosed bracket, ...)."""
    # where the unfinished construct began (an unclosed bracket's line), else where the parser stopped
    mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if "'\\t'" in problem:
        problem += " (YAML indents with spaces, not tabs)"
    if mark is None:
        return f"a config file is not valid YAML: {problem}"
    return f"{mark.name}, line {mark.line + 1}: not valid YAML: {problem}"


def undecodable_config_file() -> str:
    """'FILE, line N: not valid UTF-8' for the first config file that does not decode."""
    for path in (path for root in config_roots() for path in sorted(root.rglob("*.yaml"))):
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            return f"{path}, line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x})"
    return "a config file is not valid UTF-8"


def _compose_defaults(overrides: list[str]) -> DictConfig:
    """train.yaml with a preset and group choices. Inside a Hydra app (`tk-train -m`, whose search path is
    the shipped configs already) Hydra is initialised and is used as it is."""
    overrides = [*overrides, *search_path_overrides()]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="tk-train"):
        return compose(config_name="train", overrides=overrides)


def compose_train_config(preset: str, overrides: Sequence[str]) -> DictConfig:
    """The resolved, validated training config for a preset plus `key=value` overrides."""
    load_registries()
    check_preset(preset)
    pairs = split_overrides(overrides)
    group_choices, plain = [], []
    for key, value in pairs:
        if key in GROUPS:
            valid = group_options(key)
            if value not in valid:
                raise ConfigError(f"unknown {key} '{value}'{close_matches(value, valid)}; valid: {', '.join(valid)}")
            group_choices.append(f"{key}={value}")
        else:
            check_override_key(key)
            plain.append((key, value))
    try:
        cfg = _compose_defaults([f"config={preset}", *group_choices])
    except MissingConfigException as error:
        raise ConfigError(f"preset '{preset}': {describe_missing_option(str(error))}") from None
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"preset '{preset}': {describe_composition_error(str(error))}") from None
    except yaml.YAMLError as error:
        raise ConfigError(describe_yaml_error(error)) from None
    except UnicodeDecodeError:
        raise ConfigError(undecodable_config_file()) from None
    OmegaConf.set_struct(cfg, True)
    for open_mapping in OPEN_MAPPINGS:  # user-named entries: param_groups.NAME=..., aux_weights.TERM=...
        OmegaConf.set_struct(cfg[open_mapping], False)
    apply_overrides(cfg, plain)
    upgrade_per_layer_entries(cfg)  # the old per-layer fields of aux_weights, in a user's file or override
    check_complete(cfg)
    validate_train_config(cfg)
    return cfg


def typed_train_config(raw: Mapping[str, Any]) -> DictConfig:
    """A resolved training config read back as plain data (from a checkpoint), typed again: the schema with
    the components it names, so that overrides of it (tk-eval's task.KEY=...) are checked like tk-train's."""
    from toolkit.config.schema import TrainConfig

    load_registries()
    raw = upgrade_saved_config(raw)  # keys that moved since the checkpoint was written
    cfg = OmegaConf.structured(TrainConfig)
    for group, registry in GROUPS.items():
        name = (raw.get(group) or {}).get("name")
        if name is not None:
            cfg[group] = OmegaConf.structured(registry.get(str(name)).config_cls)
    try:
        cfg = OmegaConf.merge(cfg, raw)
    except OmegaConfBaseException as error:
        raise explain(error, cfg) from None
    OmegaConf.set_struct(cfg, True)
    for open_mapping in OPEN_MAPPINGS:
        OmegaConf.set_struct(cfg[open_mapping], False)
    upgrade_per_layer_entries(cfg)  # a checkpoint's config written with the old per-layer fields
    return cfg
