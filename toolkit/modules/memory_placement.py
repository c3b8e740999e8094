"""Place product-key memories into any model built from TransformerLayer (char LM, word LM, MT decoder).

Config (top-level `memory`): which layers, and whether the memory replaces the layer's FFN or is added as a
residual sublayer after it. Placement happens right after the model is built, so checkpoints, tk-eval and
dry runs see the same model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Dict, List, Optional

from omegaconf import OmegaConf
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.pkm import PKMConfig, ProductKeyMemory
from toolkit.modules.pkm_metrics import MemoryUsageTracker

log = logging.getLogger(__name__)


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

    layers: List[int] = field(default_factory=list)  # 0-based layer indices; empty = no memory
    mode: MemoryMode = MemoryMode.replace_ffn  # replace_ffn or after_layer (a residual memory sublayer after it)
    stack: MemoryStack = MemoryStack.auto  # module list holding the layers: layers, decoder_layers or auto
    pkm: PKMConfig = field(default_factory=PKMConfig)


class MemoryAfterLayer(nn.Module):
    """A layer followed by x + dropout(memory(norm(x))) (pre-norm residual memory)."""

    def __init__(self, layer: nn.Module, memory: ProductKeyMemory, d_model: int, dropout: float):
        super().__init__()
        self.layer, self.memory, self.norm, self.dropout = layer, memory, nn.LayerNorm(d_model), nn.Dropout(dropout)

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
    raise ConfigError(f"memory.stack={name}: the model {type(model).__name__} has no such layer list")


def place_memories(model: nn.Module, raw: Optional[object]) -> List[ProductKeyMemory]:
    """Insert memories as configured; returns them (empty when memory.layers is empty)."""
    if raw is None:
        return []
    cfg = OmegaConf.merge(OmegaConf.structured(MemoryPlacementConfig), raw)
    if not cfg.layers:
        return []
    stack = _stack(model, cfg.stack)
    pkm_cfg = OmegaConf.to_object(cfg.pkm)
    memories = []
    for index in cfg.layers:
        if not 0 <= index < len(stack):
            raise ConfigError(f"memory.layers: layer {index} does not exist (the model has {len(stack)})")
        layer = stack[index]
        d_model = layer.ffn_norm.normalized_shape[0]
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
        for name, module in model.named_modules():
            if isinstance(module, ProductKeyMemory):
                module.track_usage = True
                tracker = MemoryUsageTracker(module.cfg.mem_size)
                self.trackers[name] = tracker
                module.register_forward_hook(self._hook(tracker))

    @staticmethod
    def _hook(tracker: MemoryUsageTracker) -> Callable:
        def hook(module: ProductKeyMemory, inputs: object, output: object) -> None:
            tracker.update_from(module)

        return hook

    def report(self, reset: bool = True) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for name, tracker in self.trackers.items():
            out.update(tracker.report(prefix=f"pkm/{name}"))
            if reset:
                tracker.reset()
        return out
