"""The training log reports model TFLOP/s from the 6N + attention estimate (and MFU only on a known GPU)."""

from __future__ import annotations

import pytest

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.train import main as train_main


def test_train_log_has_tflops_from_the_6n_plus_attention_formula(text8_small, tmp_path) -> None:
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=2, save_interval=0)) == 0
    # 1 layer, d=32, d_ff=64, 27 symbols (tied output), windows of 33 tokens
    n = 4 * 32 * 32 + 2 * 32 * 64 + 27 * 32
    flops_per_token = 6 * n + 12 * 32 * 33
    records = read_log(run)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["tflops_per_s"] == pytest.approx(flops_per_token * record["tokens_per_s"] / 1e12, rel=1e-9)
        assert record["tflops_per_s_per_device"] == record["tflops_per_s"]
        assert "mfu" not in record  # CPU: no peak to compare with
