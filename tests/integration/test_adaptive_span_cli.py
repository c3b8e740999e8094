"""Adaptive span end to end: streamed tk-train (exact resume with the cache), streamed tk-eval, tk-analyze spans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import read_log
from toolkit.cli.analyze import ANALYSES
from toolkit.cli.analyze import main as analyze_main
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint


def tiny_stream_args(data: Path, run_dir: Path, **overrides: object) -> list[str]:
    """A 2-layer d32 adaptive-span model on 4 streams of 16-character blocks; epochs of 3 blocks, so that the
    8 updates cross two epoch starts (cache resets, a new stream offset)."""
    args = {
        "data": data,
        "run_dir": run_dir,
        "max_update": 8,
        "log_interval": 1,
        "validate_interval": 0,
        "save_interval": 4,
        "final_subset": "null",
        "tensorboard": "false",
        "progress": "plain",
        "device": "cpu",
        "lr_scheduler.warmup_updates": 0,
        "model.n_layers": 2,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.d_ff": 64,
        "model.attn_span": 128,
        "model.span_init": 0.1,
        "model.dropout": 0.1,
        "task.tokens_per_sample": 16,
        "task.batch_size": 4,
        "task.batches_per_epoch": 3,
        "task.valid_max_tokens": 2000,
    }
    args.update(overrides)
    return ["config=adaptive_span_tiny_text8"] + [f"{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="module")
def straight_run(text8_small, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("adaptive_span") / "straight"
    assert train_main(tiny_stream_args(text8_small, run_dir)) == 0
    return run_dir


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_log(run_dir)}


def test_resume_restores_the_stream_cache_and_is_exact(text8_small, straight_run, tmp_path) -> None:
    resumed, cold = tmp_path / "resumed", tmp_path / "cold"
    assert train_main(tiny_stream_args(text8_small, resumed, max_update=4)) == 0
    half = load_checkpoint(resumed / "checkpoint_last.pt")
    assert half["position"] == {"step": 4, "epoch": 2, "index": 1}
    cache = half["task"][0]["stream_cache"]
    assert [tuple(c.shape) for c in cache] == [(4, 16, 32)] * 2  # one block into epoch 2 (reset at its start)
    # the same checkpoint without its cache: the next loss differs, so the check below is not vacuous
    cold.mkdir()
    save_checkpoint({**half, "task": [{}]}, cold / "checkpoint_last.pt")
    (cold / "train_log.jsonl").write_text((resumed / "train_log.jsonl").read_text())

    assert train_main(tiny_stream_args(text8_small, resumed)) == 0
    assert train_main(tiny_stream_args(text8_small, cold, max_update=5)) == 0
    straight, again = (
        load_checkpoint(straight_run / "checkpoint_last.pt"),
        load_checkpoint(resumed / "checkpoint_last.pt"),
    )
    assert straight["position"] == again["position"]
    for key, value in straight["model"].items():
        assert torch.equal(value, again["model"][key]), key
    for a, b in zip(straight["task"][0]["stream_cache"], again["task"][0]["stream_cache"]):
        assert torch.equal(a, b)
    assert losses(resumed) == losses(straight_run) and sorted(losses(resumed)) == list(range(1, 9))
    assert losses(cold)[5] != losses(straight_run)[5]


def test_training_logs_learned_spans_and_the_weighted_span_term(straight_run) -> None:
    record = read_log(straight_run)[-1]
    spans = load_checkpoint(straight_run / "checkpoint_last.pt")["model"]
    expected = spans["layers.1.self_attn.span.span_param"][0].item() * 128
    assert record["span/layer1_head0"] == pytest.approx(expected)
    assert {f"span/layer{l}_head{h}" for l in range(2) for h in range(2)} <= set(record)
    assert record["weight/span_l1"] == 2.0e-6 and record["aux/span_l1"] > 0


def test_streamed_eval_scores_every_character(straight_run, capsys) -> None:
    checkpoint = straight_run / "checkpoint_last.pt"
    assert eval_main([f"checkpoint={checkpoint}", "device=cpu", "task.eval_streams=8"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["protocol"] == "stream" and metrics["streams"] == 8 and metrics["block"] == 16
    assert metrics["tokens"] == 10_000 - 1  # the whole 10k test split, every target
    assert 1.0 < metrics["bpc"] < 6.0


def test_analyze_spans_writes_png_and_json(straight_run, tmp_path, capsys) -> None:
    out = tmp_path / "spans"
    assert analyze_main(["spans", f"checkpoint={straight_run / 'checkpoint_last.pt'}", f"output={out}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "spans.json").read_text())
    weights = load_checkpoint(straight_run / "checkpoint_last.pt")["model"]
    expected = [(weights[f"layers.{l}.self_attn.span.span_param"] * 128).tolist() for l in range(2)]
    assert report["spans"] == expected and report["kind"] == "static" and report["step"] == 8
    assert report["windows"] == [64 if max(z) + 32 <= 64 else 128 for z in expected]
    assert (out / "spans.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["png"] == str(out / "spans.png") and summary["mean_span"] == pytest.approx(report["mean_span"])


VALID = ", ".join(sorted(ANALYSES))  # spans, and whatever other analyses are registered


@pytest.mark.parametrize(
    "args, message",
    [
        ([], f"error: no analysis given: tk-analyze ANALYSIS key=value ... (valid: {VALID})"),
        (["spanz"], f"error: unknown analysis 'spanz' (did you mean: spans?); valid: {VALID}"),
        (["spans"], "error: missing required value for key 'checkpoint'"),
        (["spans", "checkpoint=/nonexistent.pt"], "error: checkpoint not found: /nonexistent.pt"),
    ],
)
def test_analyze_errors_are_one_line(args, message, capsys) -> None:
    assert analyze_main(args) == 2
    assert capsys.readouterr().err.strip() == message


def test_analyze_dynamic_spans_averages_predictions_over_validation_blocks(text8_small, tmp_path) -> None:
    from toolkit.errors import DataError
    from toolkit.eval.span_analysis import analyze_spans
    from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
    from toolkit.modules.attention.span_attention import span_stats

    torch.manual_seed(0)
    cfg = dict(
        vocab_size=27,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=24,
        block_size=16,
        attn_span=64,
        dynamic_span=True,
        span_init=0.2,
    )
    model = StreamingLM(StreamingLMConfig(**cfg)).eval()
    for layer in model.layers:
        torch.nn.init.normal_(layer.self_attn.span.predictor.weight, std=0.5)
    config = {"model": {**cfg, "name": "streaming_lm"}, "task": {"tokens_per_sample": 16}, "data": str(text8_small)}
    save_checkpoint({"config": config, "model": model.state_dict(), "position": {"step": 3}}, tmp_path / "ckpt.pt")
    report = analyze_spans(str(tmp_path / "ckpt.pt"))
    # independently: the model's own mean prediction over 8 rows of 16 validation characters
    from toolkit.data.char_corpus import load_char_split

    valid = torch.from_numpy(load_char_split(text8_small, "valid")[:128].astype("int64")).view(8, 16)
    model(valid)
    assert report["kind"] == "dynamic" and report["spans"] == span_stats(model).tolist()
    assert Path(report["json"]) == tmp_path / "ckpt_spans" / "spans.json" and Path(report["png"]).is_file()
    config["data"] = str(tmp_path / "gone")
    save_checkpoint({"config": config, "model": model.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(DataError, match=r"^dynamic spans depend on the input: the dataset folder is needed"):
        analyze_spans(str(tmp_path / "ckpt.pt"))
