"""Parse `key=value` command-line arguments into a typed (dataclass) OmegaConf config.

Used by every CLI (tk-train applies its plain overrides with it after Hydra's composition). Every problem
becomes a ConfigError whose message is one line naming the key. Values are read as YAML, except that a
number, boolean or date given for a text field stays the text typed (`run_dir=0042`, `data=1e3`).
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Iterable, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)
from omegaconf.nodes import AnyNode, EnumNode, StringNode

from toolkit.config.ranges import check_ranges
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


INVALID_CHOICE = re.compile(r"^Invalid value '(.*)', expected one of \[(.*)\]$")


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
        choice = INVALID_CHOICE.match(msg)
        if choice:  # an Enum field: the value and the valid ones, as the hand-written checks said it
            return ConfigError(f"{key}: '{choice.group(1)}' (valid: {choice.group(2)})")
        return ConfigError(f"wrong type for key '{key}': {msg}")
    return ConfigError(f"config key '{key}': {str(error).splitlines()[0]}")


def apply_overrides(cfg: DictConfig, pairs: Iterable[tuple[str, str]]) -> DictConfig:
    """Merge dotted overrides into a structured config, validating keys and types."""
    for key, value in pairs:
        parsed = parse_value(key, value, text_field=_is_text_field(cfg, key))
        try:
            target, parsed, merge, add = component_override(cfg, key, parsed)
            OmegaConf.update(cfg, target, parsed, merge=merge, force_add=add)
        except OmegaConfBaseException as error:
            if getattr(error, "full_key", None) in (None, ""):
                error.full_key = key  # type: ignore[attr-defined]
            raise explain(error, cfg) from None
    return cfg


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key) if key else cfg
    except OmegaConfBaseException:
        return None


def _is_component_mapping(node: Any) -> bool:
    """An untyped mapping with a `name`: a component chosen by name with its options (e.g. model.attention)."""
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict and "name" in node


def component_override(cfg: DictConfig, key: str, value: Any) -> tuple[str, Any, bool, bool]:
    """(key, value, merge, force_add) for OmegaConf.update. A field typed Any that holds a component by name
    or as {name: NAME, option: value} (e.g. model.attention) takes overrides as a choice does:
    - a mapping that names another component replaces the one there (its options would not fit); one without
      a name, or with the same, updates its options;
    - `FIELD.OPTION=value` on a field holding a bare name makes it {name: NAME, OPTION: value};
    - an option the mapping does not list yet is added (the component checks its options when it is built).
    Any other key is merged as usual."""
    current = _select(cfg, key)
    if isinstance(value, (dict, DictConfig)) and _is_component_mapping(current):
        value = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
        if value.get("name", current.name) != current.name:
            return key, value, False, False
        return key, {**OmegaConf.to_container(current), **value}, False, False  # options merged, new ones added
    parent_key, _, option = key.rpartition(".")
    if not parent_key:
        return key, value, True, False
    holder = _select(cfg, parent_key)
    if isinstance(holder, str):
        grand_key, _, field_name = parent_key.rpartition(".")
        grand = _select(cfg, grand_key)
        node = grand._get_node(field_name) if isinstance(grand, DictConfig) and field_name in grand else None
        if isinstance(node, AnyNode):
            return parent_key, {"name": holder, option: value}, False, False
    if _is_component_mapping(holder) and option not in holder:
        return key, value, True, True
    return key, value, True, False


def _is_text_field(cfg: DictConfig, key: str) -> bool:
    """True when `key` names an existing text (str or Enum) field of cfg."""
    parent_key, _, name = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    except OmegaConfBaseException:
        return False
    node: Optional[Any] = parent._get_node(name) if isinstance(parent, DictConfig) and name in parent else None
    return isinstance(node, (StringNode, EnumNode))


def parse_value(key: str, text: str, text_field: bool = False) -> Any:
    """YAML scalar parsing, as Hydra does: 1 -> int, true -> bool, null -> None, [a,b] -> list.

    For a text field, a value YAML reads as a number, boolean or date stays the text typed (YAML 1.1 reads
    0042 as octal 34). Text that is not valid YAML (`'abc`, `[`) is a one-line ConfigError naming the key.
    """
    if text == "":
        return ""
    try:
        value = OmegaConf.create(f"v: {text}")["v"]
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{key}={text}: not a valid value ({problem}; quote text with '...')") from None
    if text_field and isinstance(value, (bool, int, float, datetime.date)):
        return text
    return value


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
    check_ranges(cfg)
    return cfg
