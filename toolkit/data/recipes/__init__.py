"""Corpus recipes for tk-preprocess. Each module registers itself in PREPROCESSORS on import."""

import importlib
import pkgutil


def load_all() -> None:
    """Import every recipe module so that its @PREPROCESSORS.register runs."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
