"""Model FLOPs per token: the estimate equals the matmul FLOPs torch counts in a real forward/backward."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.unit.golden_cases import CASES_BY_NAME, build_model, plain_config
from toolkit.train.flops import peak_tflops, throughput_metrics, train_flops_per_token


def counted_per_token(name: str) -> tuple[float, int, torch.nn.Module]:
    """FLOPs torch's counter sees in one training forward/backward, per token, and the sequence length."""
    case = CASES_BY_NAME[name]
    torch.manual_seed(0)
    model = build_model(case.model, plain_config(case.model, case.config), case.task, case.memory)
    inputs = case.inputs(torch.Generator().manual_seed(0))
    tokens = inputs["blocks"][0] if "blocks" in inputs else inputs["tokens"]
    # the math backend runs attention as visible matmuls (the fused CPU kernel is not counted)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        output = model(tokens)[0]
        output.float().sum().backward()
    return counter.get_total_flops() / tokens.numel(), tokens.size(1), model


@pytest.mark.parametrize("name", ["lm_plain", "stream_all_attention", "stream_adaptive_span", "stream_fixed_window"])
def test_estimate_equals_counted_matmul_flops(name: str) -> None:
    counted, seq_len, model = counted_per_token(name)
    assert train_flops_per_token(model, seq_len) == counted


def test_mae_estimate_leaves_out_only_the_tiny_gate_to_head_product() -> None:
    counted, seq_len, model = counted_per_token("lm_mae")
    assert train_flops_per_token(model, seq_len) == pytest.approx(counted, rel=0.01)


def test_pkm_estimate_adds_the_value_read_the_counter_does_not_see() -> None:
    counted, seq_len, model = counted_per_token("lm_pkm_replace_ffn")
    memory = model.layers[1].ffn
    value_read = 3 * memory.heads * 2 * memory.knn * memory.v_dim  # EmbeddingBag: no FLOPs for the counter
    assert train_flops_per_token(model, seq_len) == counted + value_read


def test_peak_table_and_mfu_only_on_a_known_gpu() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some CPU") is None
    metrics = throughput_metrics(6_000_000, 1e6, 2, torch.device("cpu"))
    assert metrics == {"tflops_per_s": 6.0, "tflops_per_s_per_device": 3.0}
