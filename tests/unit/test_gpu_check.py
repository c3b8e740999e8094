"""scripts/gpu_check.py on CPU with tiny models: every check's code path runs and reports sane numbers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    threads = torch.get_num_threads()
    try:
        assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_every_check_ran_without_error(report: dict) -> None:
    assert set(gpu_check.CHECKS) <= set(report)
    assert not [name for name in gpu_check.CHECKS if "error" in report[name]]


def test_training_steps_report_finite_losses_and_throughput(report: dict) -> None:
    steps = {k: v for k, v in report["train_steps"].items() if k != "check_seconds"}
    assert set(steps) == {"base_wmt14/bf16", "base_wmt14/fp16", "t12_text8/bf16", "t12_text8/fp16"}
    for result in steps.values():
        assert result["loss_finite"] and result["tokens_per_s"] > 0
        assert result["tflops_per_s"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 1e12)
        assert result["mfu"] is None and result["peak_memory_gib"] is None  # CPU: no peak, no CUDA memory
    assert steps["t12_text8/bf16"]["tokens_per_step"] == 2 * 32
    mae = report["mae7_vs_base"]
    assert mae["mae7_wmt14"]["flops_per_token"] > mae["base_wmt14"]["flops_per_token"]  # the causal gates


def test_fp16_overflow_step_is_skipped_and_the_next_applied(report: dict) -> None:
    check = report["fp16_overflow_skip"]
    assert check["first_step_skipped"] and check["second_step_applied"] and check["scale_reduced"]
    assert check["steps"][0]["scale_before"] == 2.0**40 and check["steps"][1]["scale_before"] == 2.0**12


def test_span_windows_sdpa_kernels_and_pkm(report: dict) -> None:
    spans = report["adaptive_span"]
    assert spans["adaptive_S8192_initial_spans"]["windows"] == [64]  # R = 32 rounded up to 64
    assert spans["adaptive_S8192_spans_S/4"]["windows"] == [320]  # 1024 / 4 + 32, rounded up to 64
    assert spans["fixed_512"]["windows"] == [512]
    for path in ("encoder_self_attention_padded", "decoder_causal_and_cross_attention", "char_lm_causal"):
        assert report["sdpa_backend"][path]  # the kernel that ran, by name
    assert report["pkm"]["weights_dtype"] == "torch.float32"
    assert math.isfinite(report["beam_search"]["fp32"]["sentences_per_s"])


def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --device cuda but torch sees no CUDA device (use --device cpu --tiny for a CPU run)"
    )
    assert not (tmp_path / "x.json").exists()


def test_large_batch_steps_run_eager_and_compiled(report: dict) -> None:
    steps = {k: v for k, v in report["train_large_batch"].items() if k != "check_seconds"}
    assert set(steps) == {
        f"{p}/bf16/{mode}" for p in ("base_wmt14", "mae7_wmt14", "t12_text8") for mode in ("eager", "compiled")
    }
    for name, result in steps.items():
        assert result["loss_finite"] and result["tokens_per_s"] > 0
        assert ("first_step_with_compile_s" in result) == name.endswith("compiled")
