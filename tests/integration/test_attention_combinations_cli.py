"""The attention combination presets end to end, shrunk: each trains a few updates with tk-train and is
evaluated with tk-eval (a T64-style deep char LM with adaptive span, a streamed LM with MAE attention, an
encoder-decoder with adaptive span in the decoder's self-attention, decoded with beam search)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import TINY_T64, read_log, tiny_mt_args, train_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.eval.span_analysis import analyze_spans
from toolkit.train.checkpoint import load_checkpoint

SHORT = {"max_update": 6, "save_interval": 6}  # 6 updates, one checkpoint


def last_eval(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_t64_with_adaptive_span_trains_with_its_span_term_and_evaluates(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "t64_span"
    args = {**SHORT, **TINY_T64, "model.n_layers": 3, "model.attention.span_init": 0.25}
    assert train_main(train_args("combinations/t64_adaptive_span_text8_tiny", text8_small, run_dir, **args)) == 0
    rows = read_log(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    spans = load_checkpoint(run_dir / "checkpoint_last.pt")["model"]
    z = [float(spans[f"layers.{l}.self_attn.span.span_param"].mean()) * 32 for l in range(3)]
    assert rows[-1]["span/mean"] == pytest.approx(sum(z) / 3, rel=1e-5)
    assert rows[-1]["weight/span_l1"] == 1.6e-5 and rows[-1]["aux/span_l1"] > 0
    assert rows[-1]["weight/target_2_nll"] == 0.5  # T64's auxiliary losses are still there
    report = analyze_spans(str(run_dir / "checkpoint_last.pt"), str(tmp_path / "spans"))  # tk-analyze spans
    assert report["kind"] == "static" and (report["n_layers"], report["n_heads"], report["max_span"]) == (3, 2, 32)
    expected = [[float(z) * 32 for z in spans[f"layers.{l}.self_attn.span.span_param"]] for l in range(3)]
    np.testing.assert_allclose(report["spans"], expected, rtol=1e-6)
    capsys.readouterr()
    assert eval_main([f"checkpoint={run_dir / 'checkpoint_last.pt'}", "subset=test", "task.eval_max_tokens=200"]) == 0
    metrics = last_eval(capsys)
    assert metrics["tokens"] == 200 and 0 < metrics["bpc"] < 6


def test_streamed_lm_with_mae_trains_streamed_and_evaluates(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "stream_mae"
    args = {
        **SHORT,
        "lr_scheduler.warmup_updates": 0,
        "model.n_layers": 2,
        "model.d_model": 16,
        "model.n_heads": 4,
        "model.d_ff": 32,
        "model.attn_span": 64,
        "model.attention.gate_hidden": 8,
        "task.tokens_per_sample": 16,
        "task.batch_size": 4,
        "task.valid_max_tokens": 2000,
    }
    assert train_main(train_args("combinations/streaming_mae_text8_tiny", text8_small, run_dir, **args)) == 0
    weights = load_checkpoint(run_dir / "checkpoint_last.pt")["model"]
    assert weights["layers.0.self_attn.mae_gate.fc2.weight"].shape == (4, 8)  # 4 experts of 3 heads
    last = read_log(run_dir)[-1]
    assert last["aux/span_l1"] > 0
    assert 0 < last["mae/layer0/entropy"] <= math.log(4) + 1e-6  # the gates' statistics, as in any MAE model
    capsys.readouterr()
    assert eval_main([f"checkpoint={run_dir / 'checkpoint_last.pt'}", "task.eval_streams=4"]) == 0
    metrics = last_eval(capsys)
    assert metrics["protocol"] == "stream" and metrics["tokens"] == 10_000 - 1 and 1 < metrics["bpc"] < 6


def test_translation_with_a_decoder_span_trains_and_decodes_with_beam_search(iwslt_sample, tmp_path, capsys):
    run_dir = tmp_path / "decoder_span"
    args = tiny_mt_args(iwslt_sample, run_dir, **{"model.slot_attention.decoder_self.max_span": 8})
    assert train_main(["config=combinations/transformer_decoder_span_iwslt14_tiny"] + args[1:]) == 0
    weights = load_checkpoint(run_dir / "checkpoint_last.pt")["model"]
    assert weights["decoder_layers.0.self_attn.key_pe"].shape == (16, 8)
    assert "encoder_layers.0.self_attn.qkv_proj.weight" in weights  # the encoder keeps plain attention
    assert read_log(run_dir)[-1]["aux/span_l1"] > 0
    capsys.readouterr()
    code = eval_main(
        [
            f"checkpoint={run_dir / 'checkpoint_last.pt'}",
            "subset=test",
            "device=cpu",
            "task.generation.beam=2",
            "task.generation.max_len_b=10",  # past the 8-position span while decoding
        ]
    )
    assert code == 0
    assert 0.0 <= last_eval(capsys)["bleu"] <= 100.0


@pytest.mark.parametrize(
    "preset, override, message",
    [
        (
            "baselines/transformer_iwslt14_tiny",
            "model.slot_attention.encoder_self=adaptive_span",
            "error: model.slot_attention.encoder_self: attention 'adaptive_span' cannot serve bidirectional (encoder) "
            "self-attention: it is causal (relative positions and spans measure distance back within one "
            "sequence); an encoder attends in both directions",
        ),
        (
            "adaptive_span/text8_tiny",
            "model.attention=standard",
            "error: model.attention: attention 'standard' cannot serve the streamed cache: a streamed cache needs "
            "relative positions, which plain attention has not (use adaptive_span, with span: fixed for a plain "
            "window, or mae)",
        ),
        (
            "combinations/t64_adaptive_span_text8_tiny",
            "model.attention.span_ramp=-2",
            "error: model.attention.span_ramp must be >= 0, got -2",
        ),
    ],
)
def test_impossible_combinations_stop_a_dry_run_with_one_line(preset, override, message, capsys):
    assert train_main([f"config={preset}", override, "dry_run=true", "data=/nonexistent"]) == 2
    assert capsys.readouterr().err.strip() == message
