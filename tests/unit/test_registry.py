"""Registries: duplicates raise, unknown names list the valid ones, configs reach Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hydra.core.config_store import ConfigStore

from toolkit.errors import ConfigError
from toolkit.registry import Registry


@dataclass
class WidgetConfig:
    name: str = "widget"
    size: int = 3


def test_register_get_and_config_store():
    registry: Registry = Registry("test_widgets")

    @registry.register("widget", WidgetConfig)
    def build(cfg):
        return cfg.size

    assert registry.get("widget").builder is build
    assert registry.names() == ["widget"]
    assert "widget.yaml" in ConfigStore.instance().list("test_widgets")


def test_duplicate_raises_and_unknown_lists_valid():
    registry: Registry = Registry("test_gadgets")
    registry.register("gadget", WidgetConfig)(lambda cfg: None)
    with pytest.raises(ValueError, match="test_gadgets 'gadget' is already registered"):
        registry.register("gadget", WidgetConfig)(lambda cfg: None)
    with pytest.raises(ConfigError, match=r"unknown test_gadgets 'gadjet' \(did you mean: gadget\?\); valid: gadget"):
        registry.get("gadjet")
