"""Models. Each derives from ToolkitModel (base.py) and registers itself in MODELS; `load_all` imports them so the
registry is complete."""

import importlib
import pkgutil


def load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
