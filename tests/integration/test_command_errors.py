"""tk-eval, tk-translate and init_from on bad input: one line, exit 2, before any work, and no output file left."""

from __future__ import annotations

import lzma
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEXT8_SAMPLE, tiny_char_args, tiny_mt_args
from tests.conftest import only_error_line as error_line
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.cli.translate import main as translate_main


@pytest.fixture(scope="module")
def char_checkpoint(text8_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("char") / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=1)) == 0
    return run / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def mt_checkpoint(iwslt_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("mt") / "run"
    assert train_main(tiny_mt_args(iwslt_sample, run, max_update=1)) == 0
    return run / "checkpoint_last.pt"


def test_eval_checks_the_results_path_before_evaluating(char_checkpoint, capsys):
    capsys.readouterr()
    assert eval_main([f"checkpoint={char_checkpoint}", "results=/nonexistent/r.json", "device=cpu"]) == 2
    out, err = capsys.readouterr()
    assert error_line(err) == "error: results=/nonexistent/r.json: folder /nonexistent does not exist"
    assert out == ""  # nothing was evaluated


def test_eval_on_data_of_another_vocabulary_names_both(char_checkpoint, tmp_path, capsys):
    from toolkit.data.char_corpus import preprocess_char_corpus

    raw = tmp_path / "raw"
    with lzma.open(TEXT8_SAMPLE, "rb") as handle:
        raw.write_bytes(handle.read(20_000))
    other = tmp_path / "bytes"
    preprocess_char_corpus("enwik8", raw, other)  # the same text, as bytes: 256 symbols
    capsys.readouterr()
    assert eval_main([f"checkpoint={char_checkpoint}", f"data={other}", "device=cpu"]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: data={other}: the dataset holds a vocabulary of 256 symbols; checkpoint {char_checkpoint} needs 27 "
        "(parameter 'embed.weight' has shape (27, 32))"
    )


def test_translate_bad_inputs_and_outputs(mt_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Das ist gut.\nab\xffc\n".encode("latin-1"))
    out = tmp_path / "out.txt"
    cases = [
        ([f"input={bad}", f"output={out}"], f"error: input={bad} line 2 is not valid UTF-8 (byte 0xff at column 3)"),
        ([f"input={tmp_path / 'none.txt'}", f"output={out}"], f"error: input={tmp_path / 'none.txt'}: no such file"),
        (
            [f"output={tmp_path / 'no' / 'out.txt'}"],
            f"error: output={tmp_path / 'no' / 'out.txt'}: folder {tmp_path / 'no'} does not exist",
        ),
    ]
    for args, expected in cases:
        capsys.readouterr()
        assert translate_main([f"checkpoint={mt_checkpoint}", "device=cpu", *args]) == 2
        assert error_line(capsys.readouterr().err) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # no output file, not even an empty one


def test_translate_invalid_utf8_on_stdin(mt_checkpoint, tmp_path):
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.cli.translate", f"checkpoint={mt_checkpoint}", "device=cpu", f"output={out}"],
        input=b"Danke.\n\xc3(\n",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert error_line(result.stderr.decode()) == "error: stdin line 2 is not valid UTF-8 (byte 0xc3 at column 1)"
    assert not out.exists()


def test_init_from_a_checkpoint_of_another_task_is_refused(text8_small, mt_checkpoint, tmp_path, capsys):
    capsys.readouterr()
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=1) + [f"init_from={mt_checkpoint}"]) == 2
    line = error_line(capsys.readouterr().err)
    assert re.fullmatch(
        rf"error: init_from={re.escape(str(mt_checkpoint))}: the checkpoint holds 0 of the model's "
        r"[\d,]+ parameter values \(0%; at least 50% needed\): a checkpoint of another model or task "
        r"\(init_from_min_fraction=0.5\)",
        line,
    )
    assert not run.exists()
