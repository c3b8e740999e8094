"""A streamed checkpoint written by the separate streamed model (before streaming_lm became a configuration of
transformer_lm) resumes under today's code exactly as that code would have gone on: the same losses and, bit
for bit, the same weights after the remaining updates."""

from __future__ import annotations

import hashlib
import json
import shutil

from tests.conftest import REPO, read_log
from tests.integration.test_combinations_cli import combination_args
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint

FIXTURE = REPO / "tests" / "fixtures" / "streamed_before_fold"
SMALL = {
    "model.d_model": 16,
    "model.d_ff": 32,
    "model.persistent_memory": 4,
    "model.attn_span": 64,
    "model.memory.pkm.key_dim": 8,
}


def test_a_checkpoint_of_the_separate_streamed_model_resumes_bit_for_bit(text8_small, tmp_path):
    old = load_checkpoint(FIXTURE / "checkpoint_2.pt")["model"]
    assert "layers.0.attn.span.span_param" in old and "layers.0.attn_norm.weight" in old  # the old names
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE / "checkpoint_2.pt", run / "checkpoint_last.pt")
    assert train_main(combination_args(text8_small, run, max_update=4, save_interval=2, **SMALL)) == 0
    expected = json.loads((FIXTURE / "step4_expected.json").read_text())
    losses = {str(r["step"]): r["loss"] for r in read_log(run)}
    assert losses == {step: expected["losses"][step] for step in ("3", "4")}
    weights = load_checkpoint(run / "checkpoint_last.pt")["model"]
    digests = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in sorted(weights.items())}
    assert digests == expected["model_sha256"]
