"""Top-level training-config keys that moved into a component's config.

What the user writes (a preset, a command-line override) is refused with one line saying where the key is
now: the fix is one edit, and nothing is silently read from another place. A checkpoint's saved config is
upgraded instead (its run must keep evaluating and resuming): `upgrade_saved_config`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from toolkit.errors import ConfigError

# old top-level key -> where it is now. `memory` (the product-key memory layers) is the model's business.
MOVED_KEYS: Dict[str, str] = {"memory": "model.memory"}


def moved_to(key: str) -> Optional[str]:
    """Where dotted `key` is now when it lies under a moved top-level key (memory.layers -> model.memory.layers)."""
    top, _, rest = key.partition(".")
    if top not in MOVED_KEYS:
        return None
    return MOVED_KEYS[top] + (f".{rest}" if rest else "")


def check_override_key(key: str) -> None:
    """ConfigError for a command-line override under a moved top-level key."""
    new = moved_to(key)
    if new is not None:
        top = key.partition(".")[0]
        raise ConfigError(f"{key}: the top-level key '{top}' is now {MOVED_KEYS[top]}: write {new}=...")


def upgrade_saved_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """A checkpoint's saved training config with moved keys where they are now (a new dict; `raw` is kept).

    The top-level `memory` of older checkpoints becomes model.memory when it placed memories; one without
    layers (the default every run saved) placed nothing and is dropped, so the model config keeps today's
    defaults and a resume compares equal."""
    upgraded = dict(raw)
    memory = upgraded.pop("memory", None)
    if isinstance(memory, Mapping) and memory.get("layers"):
        upgraded["model"] = {**(upgraded.get("model") or {}), "memory": memory}
    return upgraded
