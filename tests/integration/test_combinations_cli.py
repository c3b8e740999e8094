"""The combination preset: a streamed LM with adaptive span, persistent memory, a product-key memory layer and
T64's auxiliary heads trains (every term logged with its scheduled weight, exact resume with the stream cache)
and evaluates with tk-eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import read_log, train_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint

PRESET = "combinations/streaming_span_memory_pkm_aux_text8_tiny"


def combination_args(data: Path, run_dir: Path, **overrides: object) -> list[str]:
    """The preset's 4 layers at d32 on 4 streams of 16-character blocks, 8 updates."""
    small = {
        "lr_scheduler.warmup_updates": 0,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.d_ff": 64,
        "model.persistent_memory": 8,
        "model.attn_span": 128,
        "model.span_init": 0.1,
        "model.memory.pkm.key_dim": 16,
        "task.tokens_per_sample": 16,
        "task.batch_size": 4,
        "task.batches_per_epoch": 3,
        "task.valid_max_tokens": 2000,
    }
    return train_args(PRESET, data, run_dir, **{**small, **overrides})


@pytest.fixture(scope="module")
def straight(text8_small, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("combination") / "straight"
    assert train_main(combination_args(text8_small, run_dir, keep_interval_checkpoints=2)) == 0
    return run_dir


def test_the_combination_trains_with_every_part_and_resumes_exactly(text8_small, straight, tmp_path):
    resumed = tmp_path / "resumed"
    weights = load_checkpoint(straight / "checkpoint_last.pt")["model"]
    # the trainer freezes a head once its term's weight is 0: layer 1-3 heads are off after update 3
    half = load_checkpoint(straight / "checkpoint_4.pt")["model"]
    assert all(torch.equal(half[k], weights[k]) for k in weights if k.startswith("aux_heads.layer_heads."))
    assert not torch.equal(half["aux_heads.target_heads.0.weight"], weights["aux_heads.target_heads.0.weight"])
    assert "layers.2.ffn.memory_values.weight" in weights  # the product-key memory in layer 3's FFN place
    assert weights["layers.0.self_attn.persistent.keys"].shape == (2, 8, 16)  # heads, persistent vectors, head dim
    assert weights["layers.0.self_attn.span.span_param"].numel() == 2  # a learned span per head
    assert {f"aux_heads.layer_heads.{i}.1.weight" for i in range(3)} | {"aux_heads.target_heads.0.weight"} <= set(
        weights
    )
    rows = read_log(straight)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows:
        done = row["step"] - 1  # updates completed before this one: the step its weights are taken at
        layer_weights = {k: v for k, v in row.items() if k.startswith("weight/layer_")}
        assert sorted(layer_weights) == [f"weight/layer_{l}_nll" for l in range(1, 4)], row
        # layer l of 4 stops at 0.5 * l / 4 * 8 = update l
        assert [name for name, w in sorted(layer_weights.items()) if w > 0] == [
            f"weight/layer_{l}_nll" for l in range(done + 1, 4)
        ]
        assert row["weight/target_2_nll"] == 0.5 and row["weight/span_l1"] == 4.0e-7
        assert row["aux/span_l1"] > 0 and row["aux/target_2_nll"] > 0
        assert row["loss"] > row["nll"]  # the weighted auxiliary terms are on top of the reported nll

    # stop after 4 updates, then resume to 8; the layer cut-offs scale with max_update, so the first half
    # keeps them where the 8-update run has them (0.5 * l / 4 * 8 = 1.0 * l / 4 * 4)
    first_half = {"max_update": 4, "aux_layer_weights.end_fraction": 1.0}
    assert train_main(combination_args(text8_small, resumed, **first_half)) == 0
    assert train_main(combination_args(text8_small, resumed)) == 0
    again = load_checkpoint(resumed / "checkpoint_last.pt")["model"]
    for key, value in weights.items():
        assert torch.equal(value, again[key]), key
    assert [r["loss"] for r in read_log(resumed)] == [r["loss"] for r in rows]


def test_the_combination_evaluates(straight, capsys):
    capsys.readouterr()
    assert eval_main([f"checkpoint={straight / 'checkpoint_last.pt'}", "device=cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["protocol"] == "stream" and metrics["block"] == 16
    assert metrics["tokens"] == 10_000 - 1  # the whole 10k test split, every target
    assert 1.0 < metrics["bpc"] < 6.0


def test_the_combination_s_spans_are_analysed_with_its_memory_in_place(straight, tmp_path):
    from toolkit.eval.span_analysis import analyze_spans

    report = analyze_spans(str(straight / "checkpoint_last.pt"), str(tmp_path / "spans"))
    weights = load_checkpoint(straight / "checkpoint_last.pt")["model"]
    n_layers = report["n_layers"]
    expected = [
        [float(z) * report["max_span"] for z in weights[f"layers.{l}.self_attn.span.span_param"]]
        for l in range(n_layers)
    ]
    assert report["kind"] == "static"
    np.testing.assert_allclose(report["spans"], expected, rtol=1e-6)
