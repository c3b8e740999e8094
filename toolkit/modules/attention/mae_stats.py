"""Gate statistics of MAE attention modules for the training log, shared by every model that holds them.

Each MAE module keeps its last forward's gate (detached); `mae_metrics` summarises those of a model's modules,
named by the model (`encoder_self.0` in the encoder-decoder, `layer0` in a decoder LM).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

from torch import Tensor, nn

from toolkit.modules.attention.mae import ExpertMixture
from toolkit.modules.attention.mae_gate import expert_usage, gate_entropy


def mae_metrics(modules: Mapping[str, ExpertMixture], target_padding: Optional[Tensor]) -> Dict[str, float]:
    """Gate statistics of each module's last forward: `mae/NAME/entropy` (nats; log(E) = uniform),
    `mae/NAME/top_usage` (largest mean expert weight; 1/E = balanced) and `mae/NAME/usage_entropy` (entropy of
    the mean usage: low = collapsed onto few experts). `target_padding` (B, T) drops padded positions of
    per-position gates that did not keep their own padding."""
    out: Dict[str, float] = {}
    for name, module in modules.items():
        g = module.last_gate
        if g is None:  # UNI-MAE (no gate) or not run yet
            continue
        padding = module.last_gate_padding
        if padding is None and g.dim() == 3 and target_padding is not None and target_padding.shape == g.shape[:2]:
            padding = target_padding  # decoder gates: drop padded target positions
        usage = expert_usage(g, padding)
        out[f"mae/{name}/entropy"] = float(gate_entropy(g, padding))
        out[f"mae/{name}/top_usage"] = float(usage.max())
        out[f"mae/{name}/usage_entropy"] = float(gate_entropy(usage))
    return out


def layer_mae_modules(layers: nn.ModuleList) -> Dict[str, ExpertMixture]:
    """The MAE attention of each layer of a decoder stack, named `layer{i}` (0-based)."""
    named: Dict[str, ExpertMixture] = {}
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(module, ExpertMixture):
                named[f"layer{i}"] = module
                break
    return named
