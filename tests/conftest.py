"""Shared fixtures: small real datasets prepared from the shipped samples, in-process CLI runs."""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

# Tests use tiny models, for which one thread is fastest and least sensitive to a loaded machine;
# subprocesses (CLI runs, DDP ranks) inherit the setting through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TEXT8_SAMPLE = REPO / "data" / "text8" / "text8-prefix-5M.xz"
WIKITEXT2_TEST = REPO / "data" / "wikitext2" / "wiki.test.tokens.xz"


@pytest.fixture(scope="session")
def text8_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """text8 prepared from the first 200,000 characters of the shipped sample (180k/10k/10k)."""
    from toolkit.data.char_corpus import preprocess_char_corpus

    root = tmp_path_factory.mktemp("text8_small")
    raw = root / "text8_200k"
    with lzma.open(TEXT8_SAMPLE, "rb") as handle:
        raw.write_bytes(handle.read(200_000))
    dest = root / "bin"
    preprocess_char_corpus("text8", raw, dest)
    return dest


@pytest.fixture(scope="session")
def wikitext_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real word dataset from the first 270 lines of the shipped WikiText-2 test file (train 200, 50, 20 lines)."""
    from toolkit.data.word_corpus import bytes_source, write_word_dataset

    lines = lzma.decompress(WIKITEXT2_TEST.read_bytes()).splitlines(keepends=True)[:270]
    parts = {"train": lines[:200], "valid": lines[200:250], "test": lines[250:270]}
    dest = tmp_path_factory.mktemp("wikitext_small") / "bin"
    write_word_dataset({k: bytes_source(k, b"".join(v)) for k, v in parts.items()}, dest)
    return dest


def train_args(preset: str, data: Path, run_dir: Optional[Path], **overrides: object) -> list[str]:
    """tk-train arguments of a short test run of `preset`: on the CPU, a log row per update, a checkpoint every 4
    updates of 8, no validation, no final test, no TensorBoard; `overrides` add to or replace these (None: leave
    the key out)."""
    args: dict[str, object] = {
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
    }
    args.update(overrides)
    return [f"config={preset}"] + [f"{k}={v}" for k, v in args.items() if v is not None]


# A T64-style char model shrunk for tests: 4 layers of d16 on windows of 32 characters (override n_layers)
TINY_T64 = {
    "model.n_layers": 4,
    "model.d_model": 16,
    "model.n_heads": 2,
    "model.d_ff": 32,
    "model.max_positions": 32,
    "task.tokens_per_sample": 32,
    "task.batch_size": 4,
    "task.eval_stride": 8,
}


def tiny_char_args(data: Path, run_dir: Path, **overrides: object) -> list[str]:
    """tk-train arguments for a 1-layer d32 char LM that trains in a fraction of a second per update."""
    tiny = {
        # cosine with min_lr_scale 1: a constant lr that does not depend on max_update
        "lr_scheduler.warmup_updates": 0,
        "lr_scheduler.min_lr_scale": 1.0,
        "model.n_layers": 1,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.d_ff": 64,
        "model.dropout": 0.1,
        "task.tokens_per_sample": 33,
        "task.batch_size": 4,
        "task.valid_max_tokens": 2000,
    }
    return train_args("text8_char_tiny", data, run_dir, **{**tiny, **overrides})


def read_log(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="session")
def iwslt_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped IWSLT14 sample, prepared once (train 4,698 / valid 1,165 / test 887 pairs)."""
    from toolkit.cli.preprocess import main as preprocess_main

    dest = tmp_path_factory.mktemp("iwslt") / "bin"
    assert preprocess_main(["config=iwslt14_sample", f"destdir={dest}"]) == 0
    return dest


def tiny_mt_args(data: Path, run_dir: Path, **overrides: object) -> list[str]:
    """tk-train arguments for a 1+1-layer d32 translation model on the IWSLT sample."""
    tiny = {
        "max_update": 4,
        "save_interval": 2,
        "model.encoder_layers": 1,
        "model.decoder_layers": 1,
        "model.d_model": 32,
        "model.ffn_dim": 64,
        "model.n_heads": 2,
        "task.max_tokens": 600,
        "task.generation.max_len_a": 0,
        "task.generation.max_len_b": 6,
        "task.generation.beam": 2,
    }
    return train_args("iwslt14_tiny", data, run_dir, **{**tiny, **overrides})


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: equal snapshots mean nothing was written or changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def only_error_line(err: str) -> str:
    """The single line of a CLI's stderr, asserting there is exactly one and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def read_in_blocks(model: torch.nn.Module, tokens: torch.Tensor, block: int) -> torch.Tensor:
    """The outputs of a model that carries a stream cache reading `tokens` (B, T) block by block, the cache
    carried from each block to the next, concatenated over time (to compare with one pass over all of it)."""
    cache, outputs = None, []
    for piece in tokens.split(block, dim=1):
        output, _, cache = model(piece, cache)
        outputs.append(output)
    return torch.cat(outputs, dim=1)


def decode_incrementally(model: torch.nn.Module, prev: torch.Tensor, encoder_out: object) -> tuple[torch.Tensor, Any]:
    """An encoder-decoder's logits for `prev` (B, T) decoded through its cache (the first two tokens at once,
    then one at a time; equal to `model.decode(prev, encoder_out)` when incremental decoding is right), and the
    decoder state they leave."""
    state = model.init_decoder_state(encoder_out)
    steps = [model.decode(prev[:, :2], None, state)]
    steps += [model.decode(prev[:, i : i + 1], None, state) for i in range(2, prev.size(1))]
    return torch.cat(steps, 1), state
