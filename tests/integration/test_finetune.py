"""Fine-tuning: init_from loads pretrained weights; train_only freezes everything it does not match."""

from __future__ import annotations

import torch

from tests.conftest import tiny_char_args
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint


def test_train_only_freezes_the_rest(text8_small, tmp_path, capsys):
    pretrained, tuned = tmp_path / "pretrained", tmp_path / "tuned"
    assert train_main(tiny_char_args(text8_small, pretrained, max_update=2, **{"model.n_layers": 2})) == 0
    args = tiny_char_args(text8_small, tuned, max_update=3, **{"model.n_layers": 2})
    init = str(pretrained / "checkpoint_last.pt")
    assert train_main(args + [f"init_from={init}", "train_only=layers\\.1\\.ffn\\."]) == 0
    before, after = load_checkpoint(init)["model"], load_checkpoint(tuned / "checkpoint_last.pt")["model"]
    for name, value in after.items():
        if name.startswith("layers.1.ffn."):
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name


def test_train_only_matching_nothing_is_an_error(text8_small, tmp_path, capsys):
    assert train_main(tiny_char_args(text8_small, tmp_path / "run") + ["train_only=no_such_parameter"]) == 2
    assert "train_only='no_such_parameter' matches no parameter" in capsys.readouterr().err
