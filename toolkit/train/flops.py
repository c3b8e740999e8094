"""Model FLOPs per trained token (the 6N + attention estimate) and model FLOPs utilisation (MFU).

Training FLOPs per token = 3 x forward (backward costs twice the forward):
- 6 * N, with N the parameters that multiply every token: nn.Linear weights (projections, FFNs, output
  layers, MAE gates, PKM query networks), an output layer tied to an embedding table (counted once as a
  matmul), and the head of an adaptive softmax. Embedding lookups cost nothing;
- attention, per layer and token, 2 matmuls (scores, weighted values) of d_model x keys each: 12 * d_model *
  keys in training. Keys = the sequence length for plain self- and cross-attention (a causal mask is not
  halved, as in the usual convention); the streamed model's relative attention is counted as it computes
  (`relative_attention_flops`: the block plus its window, position keys, persistent slots, and the cached
  inputs projected again at every block);
- product-key memory: per head, the sub-key scores (2 * n * key_dim) and the value read (2 * k * v_dim).

Word-level adaptive input/softmax are approximated (all input projections counted, adaptive-softmax tails not):
the estimate is for throughput logs, not for accounting. MFU = achieved FLOP/s per GPU / the GPU's dense peak.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from toolkit.models.base import ToolkitModel
from toolkit.modules.adaptive_softmax import AdaptiveSoftmax
from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.relative import RelativeAttention
from toolkit.modules.pkm import ProductKeyMemory

# Dense (no sparsity) bf16/fp16 tensor-core peak TFLOP/s per GPU, from NVIDIA's datasheets (the sparse figure
# halved). Matched against torch.cuda.get_device_name(), first match wins (more specific names first).
PEAK_TFLOPS_BF16: Dict[str, float] = {
    "H200": 989.4,  # H200 SXM: same tensor cores as H100 SXM
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # H100 SXM5
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,  # AWS A10G (lower clocks than A10)
    "A10": 125.0,
    "V100": 125.0,  # fp16 only (no bf16)
}


def peak_tflops(device_name: str) -> Optional[float]:
    """Dense bf16/fp16 peak of a GPU by name (e.g. 'NVIDIA H100 80GB HBM3'), None when unknown."""
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in device_name:
            return value
    return None


def matmul_parameters(model: ToolkitModel) -> int:
    """N of the 6N term: parameters multiplied with every token (see the module docstring)."""
    seen: set[int] = set()
    total = 0

    def add(p: Optional[torch.Tensor]) -> None:
        nonlocal total
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()

    for module in model.modules():
        if isinstance(module, nn.Linear):
            add(module.weight)
        elif isinstance(module, AdaptiveSoftmax):
            add(module.head_words)
            add(module.head_clusters)
    # an output layer applied through F.linear (e.g. the encoder-decoder's shared embedding table)
    add(model.shared_output_weight())
    return total


def relative_attention_flops(module: RelativeAttention, block: int) -> int:
    """Forward FLOPs per token of cached relative attention over blocks of `block` tokens with a window of L
    keys: a block's queries score and read its M + L - 1 inputs (4 d (M + L - 1)), its position keys
    (2 d L) and persistent slots (4 d N), and the L - 1 cached inputs are projected to keys and values again
    at every block (4 d^2 (L - 1) / M)."""
    d = module.d_model
    window = module.span.window_length() if module.span is not None and module.trim else module.max_span
    persistent = module.persistent.size if module.persistent is not None else 0
    inputs = block + window - 1
    return 4 * d * inputs + 2 * d * window + 4 * d * persistent + 4 * d * d * (window - 1) // block


def attention_flops_per_token(model: ToolkitModel, seq_len: int) -> int:
    """Forward attention (and memory lookup) FLOPs per token, summed over layers (see the module docstring)."""
    flops = 0
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            flops += 4 * module.d_model * seq_len
        elif isinstance(module, RelativeAttention):
            flops += relative_attention_flops(module, seq_len)
        elif isinstance(module, ProductKeyMemory):
            flops += module.heads * (2 * module.n_keys * module.key_dim + 2 * module.knn * module.v_dim)
    return flops


def train_flops_per_token(model: ToolkitModel, seq_len: int) -> int:
    """Estimated training FLOPs (forward + backward) per token at sequence length `seq_len`."""
    return 6 * matmul_parameters(model) + 3 * attention_flops_per_token(model, seq_len)


def throughput_metrics(
    flops_per_token: int, tokens_per_s: float, world_size: int, device: torch.device
) -> Dict[str, float]:
    """{'tflops_per_s': whole job, 'tflops_per_s_per_device', and on a known GPU 'mfu'} for the logs."""
    per_device = flops_per_token * tokens_per_s / max(world_size, 1) / 1e12
    metrics = {"tflops_per_s": per_device * world_size, "tflops_per_s_per_device": per_device}
    if device.type == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(device))
        if peak:
            metrics["mfu"] = per_device / peak
    return metrics
