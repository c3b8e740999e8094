"""average_last_n: a run ends by writing checkpoint_avg.pt (the mean of its last N interval checkpoints) and
tests that model, the number the translation papers report."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_char_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.train.checkpoint import load_checkpoint


def test_the_final_test_scores_the_mean_of_the_last_n_checkpoints(text8_small, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_char_args(
        text8_small,
        run_dir,
        save_interval=2,
        keep_interval_checkpoints=3,
        average_last_n=3,
        final_subset="test",
        **{"task.eval_max_tokens": 3000},
    )
    assert train_main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(p.name for p in run_dir.glob("checkpoint_*.pt")) == [
        "checkpoint_4.pt",
        "checkpoint_6.pt",
        "checkpoint_8.pt",
        "checkpoint_avg.pt",
        "checkpoint_best.pt",
        "checkpoint_last.pt",
    ]
    states = [load_checkpoint(run_dir / f"checkpoint_{step}.pt")["model"] for step in (4, 6, 8)]
    averaged = load_checkpoint(run_dir / "checkpoint_avg.pt")
    assert averaged["averaged_from"] == [str(run_dir / f"checkpoint_{s}.pt") for s in (4, 6, 8)]
    for key, value in averaged["model"].items():
        expected = (states[0][key].double() + states[1][key].double() + states[2][key].double()) / 3
        assert torch.allclose(value.double(), expected, rtol=0, atol=1e-7), key
    assert any(not torch.equal(value, states[2][key]) for key, value in averaged["model"].items())
    assert final["checkpoint"] == str(run_dir / "checkpoint_avg.pt")
    assert eval_main([f"checkpoint={run_dir / 'checkpoint_avg.pt'}", "subset=test", "task.eval_max_tokens=3000"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["bpc"] == final["bpc"]  # the final test is the averaged model's score
    assert eval_main([f"checkpoint={run_dir / 'checkpoint_last.pt'}", "subset=test", "task.eval_max_tokens=3000"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpc"] != final["bpc"]


def test_averaging_needs_the_checkpoints_kept(text8_small, tmp_path, capsys):
    args = tiny_char_args(text8_small, tmp_path / "run", keep_interval_checkpoints=2, average_last_n=5)
    assert train_main(args) == 2
    assert capsys.readouterr().err == (
        "error: average_last_n=5 needs keep_interval_checkpoints >= 5 and "
        "save_interval > 0 (got keep_interval_checkpoints=2, save_interval=4)\n"
    )
    assert not (tmp_path / "run").exists()


def test_checkpoints_whose_models_name_their_tensors_differently_are_not_averaged(tmp_path):
    from toolkit.errors import DataError
    from toolkit.train.averaging import average_checkpoints
    from toolkit.train.checkpoint import save_checkpoint

    w = torch.ones(2)
    save_checkpoint({"model": {"layers.0.attn.k": w}, "config": {}}, tmp_path / "checkpoint_2.pt")
    save_checkpoint({"model": {"layers.0.self_attn.k": w}, "config": {}}, tmp_path / "checkpoint_4.pt")
    with pytest.raises(DataError) as error:
        average_checkpoints([tmp_path / "checkpoint_2.pt", tmp_path / "checkpoint_4.pt"])
    assert str(error.value) == (
        f"cannot average {tmp_path / 'checkpoint_2.pt'} with {tmp_path / 'checkpoint_4.pt'}: their models name "
        "their tensors differently ('layers.0.attn.k' is in one only); average checkpoints written by the same "
        "toolkit version"
    )
