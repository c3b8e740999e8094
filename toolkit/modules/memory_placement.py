"""Place product-key memories into any model built from TransformerLayer (the decoder LM in all its
configurations: transformer_lm, char_transformer, streaming_lm; the MT encoder and decoder).

Config: the model config's `memory` field (MemoryConfigMixin): which layers, and whether the memory replaces
the layer's FFN or is added as a residual sublayer after it. `ToolkitModel.from_config` places the memories
right after the model is built, so training, checkpoints, tk-eval and dry runs see the same model.
`UsageMonitor` accumulates each memory's slot usage over its reads for the model's `metrics()`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Dict, Iterator, List, Optional

from omegaconf import OmegaConf
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.pkm import PKMConfig, ProductKeyMemory, validate_pkm_config
from toolkit.modules.pkm_metrics import MemoryUsageTracker
from toolkit.modules.transformer_layer import TransformerLayer

log = logging.getLogger(__name__)

WHERE = "model.memory"  # the config key placement errors name


class MemoryMode(StrEnum):
    """How a memory joins its layer."""

    replace_ffn = "replace_ffn"  # the memory is the layer's FFN
    after_layer = "after_layer"  # a residual memory sublayer after the layer


class MemoryStack(StrEnum):
    """The model's module list holding the layers."""

    auto = "auto"  # whichever of decoder_layers, layers exists
    layers = "layers"
    decoder_layers = "decoder_layers"


@dataclass
class MemoryPlacementConfig:
    """Where product-key memories go (none by default)."""

    layers: List[int] = field(default_factory=list)
    """0-based indices of the layers that get a memory; empty = no memory."""
    mode: MemoryMode = MemoryMode.replace_ffn
    """replace_ffn (the memory is the layer's FFN) or after_layer (a pre-norm residual memory sublayer after
    the layer; Transformer layers only)."""
    stack: MemoryStack = MemoryStack.auto
    """The module list holding the layers: layers, decoder_layers, or auto (decoder_layers where the model
    has them, else layers)."""
    pkm: PKMConfig = field(default_factory=PKMConfig)
    """Size and options of every memory placed (toolkit/modules/pkm.py)."""


@dataclass
class MemoryConfigMixin:
    """The `memory` field of every model config whose model can hold product-key memory layers."""

    memory: MemoryPlacementConfig = field(default_factory=MemoryPlacementConfig)
    """Product-key memories placed in the model's layers (none by default; docs/pkm.md)."""


class MemoryAfterLayer(nn.Module):
    """A layer followed by x + dropout(memory(norm(x))) (pre-norm residual memory).

    Attributes it lacks are read from the wrapped layer (`cross_attn`, `self_attn`, ...), so code that walks
    the layers (incremental decoding's caches, MAE gate metrics) finds what it expects."""

    def __init__(self, layer: nn.Module, memory: ProductKeyMemory, d_model: int, dropout: float):
        super().__init__()
        self.layer, self.memory, self.norm, self.dropout = layer, memory, nn.LayerNorm(d_model), nn.Dropout(dropout)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__.get("_modules", {}).get("layer")  # not self.layer: no recursion before __init__
            if layer is None:
                raise
            return getattr(layer, name)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        x = self.layer(x, *args, **kwargs)
        mask = kwargs.get("ffn_padding_mask")
        mask = mask if mask is not None else kwargs.get("padding_mask")
        return x + self.dropout(self.memory(self.norm(x), mask))


def _stack(model: nn.Module, name: str) -> nn.ModuleList:
    candidates = ["decoder_layers", "layers"] if name == "auto" else [name]
    for candidate in candidates:
        stack = getattr(model, candidate, None)
        if isinstance(stack, nn.ModuleList):
            return stack
    raise ConfigError(f"{WHERE}.stack={name}: the model {type(model).__name__} has no such layer list")


def _check_layer(model: nn.Module, layer: nn.Module, index: int, mode: str) -> None:
    """ConfigError when `mode` cannot work in this layer."""
    kind = f"layer {index} of {type(model).__name__} ({type(layer).__name__})"
    if mode == "after_layer" and not isinstance(layer, TransformerLayer):
        raise ConfigError(f"{WHERE}.mode=after_layer: {kind} is not a TransformerLayer; use mode=replace_ffn")
    if mode == "replace_ffn" and (getattr(layer, "ffn", None) is None or getattr(layer, "ffn_norm", None) is None):
        raise ConfigError(f"{WHERE}.mode=replace_ffn: {kind} has no FFN to replace")


def place_memories(model: nn.Module, raw: Optional[object]) -> List[ProductKeyMemory]:
    """Insert memories as configured (a MemoryPlacementConfig or its dict); returns them (empty when
    `layers` is empty). Raises ConfigError naming the model.memory key that cannot work in this model."""
    if raw is None:
        return []
    cfg = OmegaConf.merge(OmegaConf.structured(MemoryPlacementConfig), raw)
    if not cfg.layers:
        return []
    stack = _stack(model, cfg.stack)
    pkm_cfg = OmegaConf.to_object(cfg.pkm)
    validate_pkm_config(pkm_cfg, f"{WHERE}.pkm")
    for index in cfg.layers:
        if not 0 <= index < len(stack):
            raise ConfigError(f"{WHERE}.layers: layer {index} does not exist (the model has {len(stack)})")
        _check_layer(model, stack[index], index, cfg.mode)
    memories = []
    for index in cfg.layers:
        layer = stack[index]
        d_model = layer.self_attn_norm.normalized_shape[0]
        memory = ProductKeyMemory(d_model, d_model, pkm_cfg)
        if cfg.mode == "replace_ffn":
            layer.ffn = memory
        else:
            stack[index] = MemoryAfterLayer(layer, memory, d_model, layer.dropout)
        memories.append(memory)
    log.info("product-key memory (%s) at layers %s of %s", cfg.mode, list(cfg.layers), cfg.stack)
    return memories


def memory_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, ProductKeyMemory) for p in m.parameters())


class UsageMonitor:
    """Memory usage and KL-from-uniform of every memory in a model, accumulated from forward hooks."""

    def __init__(self, model: nn.Module):
        self.trackers: Dict[str, MemoryUsageTracker] = {}
        self.counting = True  # False inside `paused()`
        for name, module in model.named_modules():
            if isinstance(module, ProductKeyMemory):
                module.track_usage = True
                tracker = MemoryUsageTracker(module.cfg.mem_size)
                self.trackers[name] = tracker
                module.register_forward_hook(self._hook(tracker))

    def _hook(self, tracker: MemoryUsageTracker) -> Callable:
        def hook(module: ProductKeyMemory, inputs: object, output: object) -> None:
            if self.counting:
                tracker.update_from(module)

        return hook

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Reads inside do not count."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def report(self, reset: bool = True) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for name, tracker in self.trackers.items():
            out.update(tracker.report(prefix=f"pkm/{name}"))
            if reset:
                tracker.reset()
        return out
