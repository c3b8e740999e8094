"""Loading a checkpoint never runs code: every loader refuses a checkpoint carrying a `__reduce__` payload, and
checkpoints written before the safe format still load (and resume bit for bit)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, only_error_line, read_log, tiny_char_args
from toolkit.cli.analyze import main as analyze_main
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.cli.translate import main as translate_main
from toolkit.errors import DataError
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint

OLD_FORMAT = REPO / "tests" / "fixtures" / "old_format" / "checkpoint_last.pt"


class Payload:
    """Unpickling this calls os.system: a command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def evil(text8_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a real tk-train checkpoint with a payload inside, the marker file the payload would create)."""
    root = tmp_path_factory.mktemp("evil")
    assert train_main(tiny_char_args(text8_small, root / "run", max_update=1)) == 0
    state = load_checkpoint(root / "run" / "checkpoint_last.pt")
    marker = root / "marker"
    state["trainer"]["note"] = Payload(marker)
    path = root / "evil.pt"
    save_checkpoint(state, path)
    assert not marker.exists()
    return path, marker


def one_error_line(err: str, path: Path) -> str:
    line = only_error_line(err)
    assert line == (
        f"error: refusing to load checkpoint {path}: it holds 'posix.system', which loading could run "
        "as code (a tk-train checkpoint holds only tensors and plain data)"
    )
    return line


def test_every_loader_refuses_a_checkpoint_that_would_run_code(evil, text8_small, tmp_path, capsys):
    path, marker = evil
    capsys.readouterr()
    commands = [
        lambda: eval_main([f"checkpoint={path}", "device=cpu"]),
        lambda: translate_main([f"checkpoint={path}", "device=cpu"]),
        lambda: analyze_main(["spans", f"checkpoint={path}"]),
        lambda: analyze_main(["gates", f"checkpoint={path}"]),
        lambda: train_main(tiny_char_args(text8_small, tmp_path / "init", max_update=1) + [f"init_from={path}"]),
    ]
    for command in commands:
        assert command() == 2
        one_error_line(capsys.readouterr().err, path)
    assert not (tmp_path / "init").exists()  # a refused init_from leaves no run folder

    # automatic resume from a checkpoint_last.pt placed in the run folder: refused, the folder untouched
    run = tmp_path / "planted"
    run.mkdir()
    shutil.copy(path, run / "checkpoint_last.pt")
    assert train_main(tiny_char_args(text8_small, run)) == 2
    one_error_line(capsys.readouterr().err, run / "checkpoint_last.pt")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_last.pt"]

    # scripts/average_checkpoints.py, as a user runs it
    shutil.copy(path, run / "checkpoint_1.pt")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "average_checkpoints.py"), str(run), "--last", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 2
    one_error_line(result.stderr, run / "checkpoint_1.pt")

    # scripts/bench_generate.py's checkpoint loader
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "scripts" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(DataError, match="refusing to load checkpoint"):
        bench.load_model(argparse.Namespace(checkpoint=str(path), device="cpu"), None, tmp_path, "de", "en")
    assert not marker.exists()


def test_checkpoints_hold_only_what_the_plain_safe_loader_reads(text8_small, tmp_path):
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=1)) == 0
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)  # no allow-list needed
    assert state["position"]["step"] == 1 and isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_old_format_checkpoint_loads_evaluates_and_resumes(text8_small, tmp_path, capsys):
    # the fixture holds 2 updates of tiny_char_args on this same dataset, written by the toolkit before the change
    capsys.readouterr()
    assert eval_main([f"checkpoint={OLD_FORMAT}", f"data={text8_small}", "subset=valid", "device=cpu"]) == 0
    assert '"step": 2' in capsys.readouterr().out.strip().splitlines()[-1]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    resumed.mkdir()
    shutil.copy(OLD_FORMAT, resumed / "checkpoint_last.pt")
    # the fixture's run used the Quickstart model of its time: initialised as model.init=fairseq does, and
    # with scaled embeddings
    then = {"model.init": "fairseq", "model.scale_embedding": "true"}
    assert train_main(tiny_char_args(text8_small, resumed, max_update=4, **then)) == 0
    assert train_main(tiny_char_args(text8_small, straight, max_update=4, **then)) == 0
    a, b = load_checkpoint(resumed / "checkpoint_last.pt"), load_checkpoint(straight / "checkpoint_last.pt")
    assert a["position"] == b["position"] and a["position"]["step"] == 4
    assert [r["loss"] for r in read_log(resumed)] == [r["loss"] for r in read_log(straight)][2:]
    # The fixture's 2 updates ran three q/k/v matmuls, the straight run's one stacked matmul: their input
    # gradients round differently (2.98e-8 at most after 4 updates). The key bias, whose true gradient is
    # zero (softmax ignores a per-query constant), follows that rounding noise through Adam, so it is left
    # out. That a resume itself changes no bit is asserted against the stacked form below.
    for key in a["model"]:
        x, y = a["model"][key], b["model"][key]
        if key.endswith("qkv_proj.bias"):  # the query and value blocks; not the key block
            d = x.numel() // 3
            x, y = torch.cat([x[:d], x[2 * d :]]), torch.cat([y[:d], y[2 * d :]])
        torch.testing.assert_close(x, y, rtol=0, atol=1e-7)


def stacked_by_hand(state: dict) -> dict:
    """The old-format fixture as a checkpoint with stacked q/k/v would hold it, written out index by index:
    model keys q/k/v -> qkv_proj, and Adam's moments of old parameters 2..7 (q.w, q.b, k.w, k.b, v.w, v.b)
    stacked into new parameters 2 (weight) and 3 (bias); later parameters move down by four."""
    model = {}
    for key, value in state["model"].items():
        if ".q_proj." in key:
            model[key.replace("q_proj", "qkv_proj")] = torch.cat(
                [state["model"][key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            )
        elif ".k_proj." not in key and ".v_proj." not in key:
            model[key] = value
    old = state["optimizers"]["main"]
    new_state = {0: old["state"][0], 1: old["state"][1]}
    for new, parts in ((2, (2, 4, 6)), (3, (3, 5, 7))):
        new_state[new] = {
            "step": old["state"][parts[0]]["step"],
            **{k: torch.cat([old["state"][i][k] for i in parts]) for k in ("exp_avg", "exp_avg_sq")},
        }
    for i in range(8, len(old["state"])):
        new_state[i - 4] = old["state"][i]
    groups = [{**old["param_groups"][0], "params": list(range(len(new_state)))}]
    return {**state, "model": model, "optimizers": {"main": {"state": new_state, "param_groups": groups}}}


def test_old_format_checkpoint_resumes_as_its_stacked_form(text8_small, tmp_path):
    # separate q/k/v projections and their optimizer state map onto the stacked ones without changing a bit
    old, stacked = tmp_path / "old", tmp_path / "stacked"
    old.mkdir(), stacked.mkdir()
    shutil.copy(OLD_FORMAT, old / "checkpoint_last.pt")
    save_checkpoint(stacked_by_hand(load_checkpoint(OLD_FORMAT)), stacked / "checkpoint_last.pt")
    then = {"model.init": "fairseq", "model.scale_embedding": "true"}
    assert train_main(tiny_char_args(text8_small, old, max_update=4, **then)) == 0
    assert train_main(tiny_char_args(text8_small, stacked, max_update=4, **then)) == 0
    a, b = load_checkpoint(old / "checkpoint_last.pt"), load_checkpoint(stacked / "checkpoint_last.pt")
    assert a["model"].keys() == b["model"].keys() and "layers.0.self_attn.qkv_proj.weight" in a["model"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizers"]["main"]["state"], b["optimizers"]["main"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert [r["loss"] for r in read_log(old)] == [r["loss"] for r in read_log(stacked)]


def test_old_format_checkpoint_initialises_a_run(text8_small, tmp_path):
    # init_from reads the separate q/k/v projections as the stacked one (lr 0: the update changes nothing)
    run = tmp_path / "run"
    args = tiny_char_args(text8_small, run, max_update=1, save_interval=0, init_from=OLD_FORMAT, **{"optimizer.lr": 0})
    assert train_main(args) == 0
    old, new = load_checkpoint(OLD_FORMAT)["model"], load_checkpoint(run / "checkpoint_last.pt")["model"]
    for kind in ("weight", "bias"):
        separate = [old[f"layers.0.self_attn.{p}_proj.{kind}"] for p in "qkv"]
        assert torch.equal(new[f"layers.0.self_attn.qkv_proj.{kind}"], torch.cat(separate))
    assert torch.equal(new["embed.weight"], old["embed.weight"])
