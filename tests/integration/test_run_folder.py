"""A run folder is never clobbered: one trainer at a time, a refused resume changes nothing, temporaries of
killed saves are swept, and a diverged run keeps (and names) its last sane checkpoint."""

from __future__ import annotations

import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TEXT8_SAMPLE, tiny_char_args
from tests.conftest import folder_snapshot as snapshot
from tests.conftest import only_error_line as error_line
from toolkit.cli.train import main as train_main
from toolkit.errors import DIVERGED_EXIT
from toolkit.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(text8_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=2)) == 0
    return run


@pytest.fixture(scope="module")
def bytes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same text prepared as enwik8 is: a vocabulary of 256 byte values instead of text8's 27."""
    from toolkit.data.char_corpus import preprocess_char_corpus

    root = tmp_path_factory.mktemp("bytes")
    raw = root / "raw"
    with lzma.open(TEXT8_SAMPLE, "rb") as handle:
        raw.write_bytes(handle.read(20_000))
    preprocess_char_corpus("enwik8", raw, root / "bin")
    return root / "bin"


def test_second_trainer_on_a_busy_run_folder_is_refused(text8_small, trained, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from toolkit.train.run_lock import RunFolderLock; "
            f"RunFolderLock({str(trained)!r}).acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(trained)
        capsys.readouterr()
        assert train_main(tiny_char_args(text8_small, trained, max_update=3, seed=7)) == 2
        line = error_line(capsys.readouterr().err)
        assert line == (
            f"error: run_dir={trained} is in use by another tk-train (host {__import__('socket').gethostname()} "
            f"pid {holder.pid}); wait for it to finish or choose another run_dir"
        )
        assert snapshot(trained) == before
        # distributed.world_size=2 is refused by the launcher itself, before torchrun starts any rank
        assert train_main(tiny_char_args(text8_small, trained, max_update=3) + ["distributed.world_size=2"]) == 2
        assert error_line(capsys.readouterr().err) == line
        assert snapshot(trained) == before
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder (its file may stay: it locks nothing); a run removes the file when it ends
    assert train_main(tiny_char_args(text8_small, trained, max_update=2)) == 0
    assert not (trained / ".tk-train.lock").exists()


def test_resume_with_another_model_is_refused_and_changes_nothing(text8_small, trained, capsys):
    before = snapshot(trained)
    capsys.readouterr()
    assert train_main(tiny_char_args(text8_small, trained, max_update=4, **{"model.n_layers": 2})) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        f"error: cannot resume from {trained / 'checkpoint_last.pt'}: model.n_layers is 1 in the checkpoint, "
        "2 now (resume with the run's settings, or choose another run_dir)"
    )
    assert snapshot(trained) == before


def test_resume_with_weights_that_fit_but_compute_otherwise_is_refused(text8_small, trained, capsys):
    """Same shapes, another computation (unscaled embeddings, post-LN): the saved weights would silently mean
    something else, so the resume is refused; a changed dropout is regularisation and resumes."""
    before = snapshot(trained)
    capsys.readouterr()
    changed = {"model.scale_embedding": "true", "model.pre_ln": "false"}
    assert train_main(tiny_char_args(text8_small, trained, max_update=4, **changed)) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        f"error: cannot resume from {trained / 'checkpoint_last.pt'}: model.pre_ln is True in the "
        "checkpoint, False now; model.scale_embedding is False in the checkpoint, True now (resume with "
        "the run's settings, or choose another run_dir)"
    )
    assert snapshot(trained) == before


def test_resume_with_another_dropout_continues(text8_small, tmp_path):
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=2)) == 0
    assert train_main(tiny_char_args(text8_small, run, max_update=3, **{"model.dropout": 0.0})) == 0
    assert load_checkpoint(run / "checkpoint_last.pt")["position"]["step"] == 3


def test_resume_on_data_of_another_vocabulary_is_refused_and_changes_nothing(trained, bytes_dataset, capsys):
    before = snapshot(trained)
    capsys.readouterr()
    assert train_main(tiny_char_args(bytes_dataset, trained, max_update=4)) == 2
    line = error_line(capsys.readouterr().err)
    assert line == (
        f"error: cannot resume from {trained / 'checkpoint_last.pt'}: data={bytes_dataset}: the dataset "
        f"holds a vocabulary of 256 symbols; checkpoint {trained / 'checkpoint_last.pt'} needs 27 "
        "(parameter 'embed.weight' has shape (27, 32)) (resume with the run's settings, or choose another run_dir)"
    )
    assert snapshot(trained) == before


def test_temporaries_of_killed_saves_are_swept_when_a_run_starts(text8_small, tmp_path):
    run = tmp_path / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=2)) == 0
    leftovers = [run / ".checkpoint_last.pt.tmp-a1b2c3", run / ".checkpoint_4.pt.tmp-x", run / ".config.yaml.tmp-q"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    mine = run / ".notes.txt.tmp-keep"  # not a file of the run: left alone
    mine.write_text("mine")
    assert train_main(tiny_char_args(text8_small, run, max_update=3)) == 0
    assert not any(p.exists() for p in leftovers) and mine.read_text() == "mine"


def test_diverged_run_keeps_and_names_its_last_sane_checkpoint(text8_small, trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pt").write_bytes((trained / "checkpoint_last.pt").read_bytes())  # a sane run at step 2
    good = load_checkpoint(run / "checkpoint_last.pt")["model"]
    capsys.readouterr()
    code = train_main(
        tiny_char_args(text8_small, run, max_update=20, save_interval=1, max_nonfinite=2, **{"optimizer.lr": 1e10})
    )
    assert code == DIVERGED_EXIT
    out, err = capsys.readouterr()
    assert error_line(err) == (
        f"error: 2 non-finite losses in a row at step 3; stopping (last good checkpoint: "
        f"{run / 'checkpoint_last.pt'} (step 2))"
    )
    assert "step=3 not saving checkpoint_last.pt" in out
    kept = load_checkpoint(run / "checkpoint_last.pt")
    assert kept["position"]["step"] == 2 and all(torch.equal(good[k], kept["model"][k]) for k in good)
