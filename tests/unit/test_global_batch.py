"""A preset's batch per update is global: the same tokens per update on 1, 2 or 4 processes."""

from __future__ import annotations

import copy
import json

import pytest

from toolkit.cli.train import main as train_main
from toolkit.config.compose import compose_train_config
from toolkit.train.global_batch import apply_global_batch, split

# preset -> (setting, value): the paper batch every world size must reproduce
PRESETS = {
    "transformer_base_wmt14": ("tokens_per_update", 28672),  # 3584 x 8, ~25k target tokens (Vaswani et al.)
    "mae7_wmt14": ("tokens_per_update", 28672),
    "transformer_iwslt14": ("tokens_per_update", 4096),  # fairseq's IWSLT recipe: 4096 tokens on one GPU
    "mae7_iwslt14": ("tokens_per_update", 4096),
    "transformer_lm_wt103": ("sequences_per_update", 144),  # 144 x 512 = 73,728 tokens (fairseq's recipe)
    "all_attention_wt103": ("sequences_per_update", 64),  # 64 streams (the reference scripts' batch)
    "adaptive_span_text8": ("sequences_per_update", 64),
    "t12_text8": ("sequences_per_update", 16),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_keep_their_batch_per_update_on_any_world_size(preset):
    key, value = PRESETS[preset]
    per_update = set()
    composed = compose_train_config(preset, ["data=/nonexistent"])
    for world_size in (1, 2, 4, 8):
        cfg = copy.deepcopy(composed)
        figures = apply_global_batch(cfg, world_size)
        assert figures[key] == value
        per_process = cfg.task.max_tokens if key == "tokens_per_update" else cfg.task.batch_size
        assert world_size * cfg.update_freq * per_process == value  # the split is exact
        per_update.add(figures["tokens_per_update"])
    assert len(per_update) == 1


def test_the_split_fills_each_process_and_accumulates_the_rest():
    cfg = compose_train_config("transformer_base_wmt14", ["data=/nonexistent"])
    assert apply_global_batch(cfg, 1)["update_freq"] == 8 and cfg.task.max_tokens == 3584
    cfg = compose_train_config("transformer_base_wmt14", ["data=/nonexistent"])
    assert apply_global_batch(cfg, 8)["update_freq"] == 1 and cfg.task.max_tokens == 3584
    cfg = compose_train_config("transformer_base_wmt14", ["data=/nonexistent", "task.max_tokens=2048"])
    figures = apply_global_batch(cfg, 2)  # a smaller GPU: more micro-batches, the same update
    assert (cfg.update_freq, cfg.task.max_tokens, figures["tokens_per_update"]) == (7, 2048, 28672)
    cfg = compose_train_config("adaptive_span_text8", ["data=/nonexistent"])
    assert apply_global_batch(cfg, 4)["update_freq"] == 1 and cfg.task.batch_size == 16  # streams only split
    assert split(144, 1, 18, False, "x", "y") == (18, 8)
    assert split(100, 1, 30, False, "x", "y") == (25, 4)  # 4 micro-batches of 25: the first exact split


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_dry_run_reports_the_same_tokens_per_update(world_size, capsys):
    args = [
        "config=text8_char_tiny",
        "dry_run=true",
        "data=/nonexistent",
        "batch.sequences_per_update=32",
        "task.batch_size=8",
        f"distributed.world_size={world_size}",
    ]
    assert train_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["world_size"] == world_size
    assert summary["sequences_per_update"] == 32 and summary["tokens_per_update"] == 32 * 128
    assert summary["update_freq"] * summary["sequences_per_process"] * world_size == 32
    assert summary["sequences_per_process"] == 8


def test_explicit_per_process_knobs_still_work(capsys):
    args = ["config=text8_char_tiny", "dry_run=true", "data=/nonexistent", "update_freq=3", "task.batch_size=5"]
    assert train_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["update_freq"], summary["sequences_per_process"], summary["sequences_per_update"]) == (3, 5, 15)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["config=t12_text8", "distributed.world_size=3"],
            "error: batch.sequences_per_update=16 cannot be split exactly over 3 processes (not a multiple of 3)",
        ),
        (
            ["config=transformer_iwslt14", "update_freq=2"],
            "error: update_freq=2 and batch.tokens_per_update=4096 are both set: update_freq is derived from "
            "batch.tokens_per_update; set batch.tokens_per_update=0 to give task.max_tokens and update_freq per process",
        ),
        (
            ["config=t12_text8", "batch.tokens_per_update=8192"],
            "error: batch.tokens_per_update and batch.sequences_per_update are both set; set one of them",
        ),
        (
            ["config=text8_char_tiny", "batch.tokens_per_update=8192"],
            "error: batch.tokens_per_update does not apply to task 'char_lm' (it has no task.max_tokens); use "
            "batch.sequences_per_update",
        ),
        (
            ["config=all_attention_wt103", "task.batch_size=16"],
            "error: batch.sequences_per_update=64 over 1 processes is 64 streams per process, more than "
            "task.batch_size=16; streamed training cannot accumulate (use more processes)",
        ),
        (
            ["config=t12_text8", "batch.sequences_per_update=17", "task.batch_size=4"],
            "error: batch.sequences_per_update=17 cannot be split exactly over 1 processes with at most task.batch_size=4 "
            "per micro-batch (17 per process is not a multiple of 5..10 micro-batches); choose a multiple of 5",
        ),
    ],
)
def test_a_batch_that_cannot_be_split_is_one_line(args, message, capsys):
    assert train_main([*args, "dry_run=true", "data=/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err == message + "\n"
