"""Parse `key=value` command-line arguments into a typed (dataclass) OmegaConf config.

Used by the CLIs that do not need Hydra's config-group composition (tk-preprocess, tk-eval). Every
problem becomes a ConfigError whose message is one line naming the key.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from toolkit.errors import ConfigError, close_matches


def split_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """['a=1', 'b.c=x'] -> [('a', '1'), ('b.c', 'x')]; anything else is an error."""
    pairs = []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"expected key=value, got '{arg}'")
        key, value = arg.split("=", 1)
        pairs.append((key.lstrip("+"), value))
    return pairs


def _keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    out = []
    for key in node.keys():
        full = f"{prefix}{key}"
        out.append(full)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            out.extend(_keys(child, full + "."))
    return out


def explain(error: OmegaConfBaseException, cfg: Any) -> ConfigError:
    """Turn an OmegaConf exception into a one-line ConfigError naming the key and close matches."""
    key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
    key = str(key)
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(f"missing required value for key '{key}'")
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"unknown key '{key}'{close_matches(key, _keys(cfg))}")
    if isinstance(error, ValidationError):
        msg = str(error).splitlines()[0]
        return ConfigError(f"wrong type for key '{key}': {msg}")
    return ConfigError(f"config key '{key}': {str(error).splitlines()[0]}")


def apply_overrides(cfg: DictConfig, pairs: Iterable[tuple[str, str]]) -> DictConfig:
    """Merge dotted overrides into a structured config, validating keys and types."""
    for key, value in pairs:
        try:
            OmegaConf.update(cfg, key, _parse_value(value), merge=True, force_add=False)
        except OmegaConfBaseException as error:
            if getattr(error, "full_key", None) in (None, ""):
                error.full_key = key  # type: ignore[attr-defined]
            raise explain(error, cfg) from None
    return cfg


def _parse_value(text: str) -> Any:
    """YAML-like scalar parsing, as Hydra does: 1 -> int, true -> bool, null -> None, [a,b] -> list."""
    return OmegaConf.create(f"v: {text}" if text != "" else "v: ''")["v"]


def check_complete(cfg: DictConfig) -> None:
    """Raise ConfigError for the first mandatory value (???) still missing."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value for key '{sorted(missing)[0]}'")


def build_config(schema: type, argv: Sequence[str]) -> DictConfig:
    """Structured config from a dataclass schema plus `key=value` arguments, fully validated."""
    cfg = OmegaConf.structured(schema)
    apply_overrides(cfg, split_overrides(argv))
    check_complete(cfg)
    return cfg
