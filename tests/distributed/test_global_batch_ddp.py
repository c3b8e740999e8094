"""The global batch under gloo: 2 processes split the preset's batch per update, with one log line saying so."""

from __future__ import annotations

from omegaconf import OmegaConf

from tests.conftest import tiny_char_args
from tests.distributed.test_ddp import start_ranks, wait_all
from toolkit.cli.train import main as train_main


def test_two_processes_split_the_batch_per_update(text8_small, tmp_path, caplog):
    overrides = {"max_update": 2, "save_interval": 2, "batch.sequences_per_update": 8, "task.batch_size": 8}
    procs = start_ranks(tiny_char_args(text8_small, tmp_path / "ddp", **overrides))
    assert wait_all(procs) == [0, 0], procs[0].stderr_text[-2000:]
    line = "batch: 8 sequences (264 tokens) per update = 2 processes x update_freq 1 x 4 per process (task.batch_size)"
    assert line in procs[0].stderr_text
    written = OmegaConf.load(tmp_path / "ddp" / "config.yaml")
    assert (written.task.batch_size, written.update_freq, written.batch.sequences_per_update) == (4, 1, 8)

    with caplog.at_level("INFO"):  # one process, at most 4 per micro-batch: the same update in 2 micro-batches
        assert train_main(tiny_char_args(text8_small, tmp_path / "one", **{**overrides, "task.batch_size": 4})) == 0
    assert (
        "batch: 8 sequences (264 tokens) per update = 1 processes x update_freq 2 x 4 per process (task.batch_size)"
    ) in caplog.text
