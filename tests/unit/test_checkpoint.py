"""Checkpoints are written atomically: a crash during a save leaves the previous one loadable."""

from __future__ import annotations

import os

import pytest
import torch

from toolkit.errors import DataError
from toolkit.train import checkpoint as ckpt


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    ckpt.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)

    def crash(fd):  # the process dies after the bytes are written but before the rename
        raise OSError("simulated crash during fsync")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt"]  # no temporary left


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=f"cannot read checkpoint {path}"):
        ckpt.load_checkpoint(path)
    with pytest.raises(DataError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_interval_checkpoints_pruned_oldest_first(tmp_path):
    for step in (5, 10, 15, 20):
        (tmp_path / f"checkpoint_{step}.pt").write_bytes(b"x")
    ckpt.prune_interval_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.interval_checkpoints(tmp_path)] == ["checkpoint_15.pt", "checkpoint_20.pt"]
