"""Named registries of components (models, tasks, criterions, optimizers, lr schedulers).

Each entry pairs a builder (class or function) with a typed dataclass config. Registering also puts the
config into Hydra's ConfigStore under the registry's group, so that `model=NAME` composes and validates it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Generic, Optional, TypeVar

from hydra.core.config_store import ConfigStore

from toolkit.errors import ConfigError, close_matches

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: T
    config_cls: Optional[type]


class Registry(Generic[T]):
    """A name -> (builder, config dataclass) map for one kind of component.

    `base` (optional) returns the class every builder must derive from; it is a function so that this module
    stays light to import (the models' base class brings torch). `config_store=False` keeps the configs out of
    Hydra's ConfigStore, for components chosen inside another component's config (attention variants).
    """

    def __init__(self, group: str, base: Optional[Callable[[], type]] = None, config_store: bool = True):
        self.group = group
        self._base = base
        self._config_store = config_store  # False: a registry no Hydra config group selects (e.g. attention)
        self._entries: Dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: Optional[type] = None) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("transformer_lm", TransformerLMConfig)`."""

        def wrap(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.group} '{name}' is already registered")
            if self._base is not None:
                base = self._base()
                if not (isinstance(builder, type) and issubclass(builder, base)):
                    raise TypeError(
                        f"{self.group} '{name}': {getattr(builder, '__qualname__', builder)!s} must be a subclass of "
                        f"{base.__module__}.{base.__qualname__}"
                    )
            if config_cls is not None:
                if not dataclasses.is_dataclass(config_cls):
                    raise TypeError(f"config for {self.group} '{name}' must be a dataclass")
                if self._config_store:
                    ConfigStore.instance().store(group=self.group, name=name, node=config_cls)
            self._entries[name] = Entry(name, builder, config_cls)
            return builder

        return wrap

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.group} '{name}'{close_matches(name, self._entries)}; "
                f"valid: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def _model_base() -> type:
    from toolkit.models.base import ToolkitModel

    return ToolkitModel


MODELS: Registry[Any] = Registry("model", base=_model_base)
TASKS: Registry[Any] = Registry("task")
CRITERIONS: Registry[Any] = Registry("criterion")
OPTIMIZERS: Registry[Any] = Registry("optimizer")
LR_SCHEDULERS: Registry[Any] = Registry("lr_scheduler")
PREPROCESSORS: Registry[Any] = Registry("preprocess")
