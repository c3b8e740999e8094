"""compile=true trains and validates with the same losses as eager execution (aot_eager backend on CPU:
the same dynamo graphs and autograd graphs as inductor, without its slow CPU code generation)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main


def test_compiled_training_and_validation_equal_eager(text8_small, tmp_path, capsys) -> None:
    runs = {}
    for name, extra in (("eager", {}), ("compiled", {"compile": "true", "compile_backend": "aot_eager"})):
        run = tmp_path / name
        assert train_main(tiny_char_args(text8_small, run, max_update=2, save_interval=0, **extra)) == 0
        runs[name] = run
    for kind in ("train", "valid"):
        eager, compiled = read_log(runs["eager"], kind), read_log(runs["compiled"], kind)
        assert len(eager) == len(compiled) > 0
        for e, c in zip(eager, compiled):
            assert c["loss"] == pytest.approx(e["loss"], rel=1e-6, abs=1e-6)
    # tk-eval compile=true scores the checkpoint as eager tk-eval does
    scores = {}
    for name, extra in (("eager", []), ("compiled", ["compile=true", "compile_backend=aot_eager"])):
        results = tmp_path / f"{name}.json"
        args = [f"checkpoint={runs['eager'] / 'checkpoint_last.pt'}", "subset=valid", f"results={results}", *extra]
        assert eval_main(args) == 0
        scores[name] = json.loads(results.read_text())
    assert scores["compiled"]["loss"] == pytest.approx(scores["eager"]["loss"], rel=1e-6)


def test_unknown_compile_backend_fails_before_any_work(text8_small, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = train_main(tiny_char_args(text8_small, run, compile="true", compile_backend="fast"))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: compile_backend: 'fast' (valid: inductor, aot_eager, eager)"
    )
    assert not run.exists()
