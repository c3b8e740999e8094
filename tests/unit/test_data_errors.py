"""File-system and data errors are one line naming the file (and line), and leave nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import only_error_line, tiny_char_args, tiny_mt_args
from toolkit.cli.preprocess import main as preprocess_main
from toolkit.cli.train import main as train_main
from toolkit.data.download import cache_path, resolve_input
from toolkit.data.parallel_corpus import iter_lines, read_segments
from toolkit.data.word_corpus import file_source, iter_word_chunks
from toolkit.errors import DataError
from toolkit.tasks.char_lm import CharLMConfig, CharLMTask

TEXT = "the quick brown fox jumps over the lazy dog " * 10


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    return only_error_line(capsys.readouterr().err)


@pytest.fixture
def text8_input(tmp_path: Path) -> Path:
    path = tmp_path / "text8_raw"
    path.write_text(TEXT)
    return path


def preprocess(input_path: Path, destdir: Path, *extra: str) -> int:
    return preprocess_main(["config=text8", f"input={input_path}", f"destdir={destdir}", *extra])


# ---- tk-preprocess destdir --------------------------------------------------------------------------------
def test_destdir_that_is_a_file_or_under_one(text8_input, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    for destdir, where in ((taken, "is a file"), (taken / "bin", f"is under {taken}, which is a file")):
        assert preprocess(text8_input, destdir) == 2
        assert one_line_error(capsys) == f"error: destdir={destdir}: {where}, not a folder"
    assert taken.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "text8_raw"]


def test_read_only_destdir(text8_input, tmp_path, capsys, monkeypatch):
    """Root writes through chmod 0500: the probe's refusal is simulated as a read-only file system gives it."""
    import toolkit.data.atomic as atomic

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", refuse)
    assert preprocess(text8_input, tmp_path / "out" / "bin") == 2
    assert (
        one_line_error(capsys) == f"error: destdir={tmp_path / 'out' / 'bin'}: cannot write in {tmp_path} "
        "(Read-only file system)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text8_raw"]


def test_full_disk_names_the_output_not_the_archive(tmp_path, capsys, monkeypatch):
    """IWSLT: the xml files are extracted from the archive into the output's scratch folder; that write fails."""
    import toolkit.data.parallel_corpus as parallel_corpus

    def full(source, out, length=0):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parallel_corpus.shutil, "copyfileobj", full)
    dest = tmp_path / "iwslt"
    assert preprocess_main(["config=iwslt14_sample", f"destdir={dest}"]) == 2
    assert one_line_error(capsys) == f"error: cannot write {dest}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder, no 0-byte file


def test_full_disk_while_writing_a_char_dataset(text8_input, tmp_path, capsys, monkeypatch):
    import toolkit.data.char_corpus as char_corpus

    real_write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "meta.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(char_corpus.Path, "write_text", full)
    assert preprocess(text8_input, tmp_path / "bin") == 2
    assert one_line_error(capsys) == f"error: cannot write {tmp_path / 'bin'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text8_raw"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 kB tmpfs (needs root and mount; skipped elsewhere): a disk that really fills up."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk_names_the_output(tmp_path, small_disk, capsys):
    """numpy's own short-write error carries no errno; the dataset's files are written so that it does."""
    import lzma

    from tests.conftest import TEXT8_SAMPLE

    raw = tmp_path / "text8_200k"  # 200 kB of splits for 64 kB of disk
    with lzma.open(TEXT8_SAMPLE, "rb") as handle:
        raw.write_bytes(handle.read(200_000))
    assert preprocess(raw, small_disk / "bin") == 2
    assert one_line_error(capsys) == f"error: cannot write {small_disk / 'bin'}: No space left on device"
    assert list(small_disk.iterdir()) == []


def test_overwrite_through_a_symlink_replaces_the_target(text8_input, tmp_path, capsys):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    (real / "old.txt").write_text("old dataset\n")
    link.symlink_to(real, target_is_directory=True)
    assert preprocess(text8_input, link, "overwrite=true") == 0
    assert link.is_symlink() and link.resolve() == real  # the link is kept, its target replaced
    assert sorted(p.name for p in real.iterdir()) == ["meta.json", "test.bin", "train.bin", "valid.bin", "vocab.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "text8_raw"]  # no .old-PID left


def test_a_link_to_a_missing_folder_is_refused(text8_input, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone", target_is_directory=True)
    assert preprocess(text8_input, link) == 2
    assert one_line_error(capsys) == f"error: destdir={link}: {link} is a link to the missing {tmp_path / 'gone'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "text8_raw"]


# ---- data of another task ---------------------------------------------------------------------------------
def test_data_of_another_task_is_named(text8_small, wikitext_small, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(tiny_mt_args(text8_small, run)) == 2
    assert one_line_error(capsys) == (
        f"error: data={text8_small} holds a character-level dataset (text8, 27 symbols), but task translation "
        "needs a translation dataset (tk-preprocess config=iwslt14_de_en, iwslt14_sample or wmt14_en_de)"
    )
    assert train_main(tiny_char_args(wikitext_small, run)) == 2
    assert one_line_error(capsys).startswith(f"error: data={wikitext_small} holds a word-level dataset (vocabulary ")
    assert train_main(tiny_char_args(tmp_path, run)) == 2  # a folder, but not a dataset
    assert one_line_error(capsys) == (
        f"error: data={tmp_path} holds no meta.json (not a folder made by tk-preprocess), but task char_lm needs "
        "a character-level dataset (tk-preprocess config=text8 or config=enwik8)"
    )
    assert not run.exists()


def test_scoring_without_a_data_folder_names_it():
    """What tk-eval data=/nonexistent reaches: the task has no splits, because it has no data folder."""
    task = CharLMTask(OmegaConf.structured(CharLMConfig), "/nonexistent", seed=1)
    with pytest.raises(DataError) as error:
        task.evaluate(torch.nn.Identity(), "test", torch.device("cpu"))
    assert str(error.value) == (
        "data=/nonexistent: no such folder; task char_lm needs a character-level dataset "
        "(tk-preprocess config=text8 or config=enwik8)"
    )


# ---- bad UTF-8: the real line number ----------------------------------------------------------------------
@pytest.mark.parametrize("bad_line, total, final_newline", [(14, 20, True), (1000, 1200, True), (30, 30, False)])
def test_bad_utf8_reports_the_real_line(tmp_path, bad_line, total, final_newline):
    lines = [f"line {i} " + "x" * 40 for i in range(1, total + 1)]
    data = "\n".join(lines).encode() + (b"\n" if final_newline else b"")
    start = sum(len(line) + 1 for line in lines[: bad_line - 1])
    data = data[: start + 5] + b"\xff" + data[start + 5 :]
    path = tmp_path / "wiki.train.tokens"
    path.write_bytes(data)
    reason = "byte 0xff: invalid start byte"
    with pytest.raises(DataError, match=rf"^{path}:{bad_line}: not valid UTF-8 \({reason}\)$"):
        list(iter_lines(path))
    with pytest.raises(DataError, match=rf"^{path}:{bad_line}: not valid UTF-8 \({reason}\)$"):
        list(iter_word_chunks(file_source(path)))


def test_bad_utf8_in_an_iwslt_xml_file(tmp_path):
    body = ["<mteval>", '<srcset setid="x" srclang="german">', '<doc docid="1">']
    body += [f'<seg id="{i}"> satz {i} </seg>' for i in range(1, 11)] + ["</doc>", "</srcset>", "</mteval>"]
    data = "\n".join(body).encode() + b"\n"
    data = data.replace(b"satz 8", b"satz \xc3(8")  # line 11: a lead byte without its continuation
    path = tmp_path / "IWSLT14.TED.dev2010.de-en.de.xml"
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"^{path}:11: not valid UTF-8 \(byte 0xc3: invalid continuation byte\)$"):
        read_segments(path)


# ---- downloads: verified, or said to be unverified --------------------------------------------------------
def test_unverified_download_is_logged_and_a_tampered_cache_is_refused(tmp_path, caplog):
    source = tmp_path / "corpus.txt"
    source.write_bytes(b"real corpus\n")
    cache = tmp_path / "cache"
    url = source.as_uri()
    with caplog.at_level(logging.WARNING, logger="toolkit.data.download"):
        got = resolve_input(url, cache)
    digest = hashlib.sha256(b"real corpus\n").hexdigest()
    assert f"{url} is UNVERIFIED: no sha256 was given" in caplog.text and digest in caplog.text
    assert got == cache_path(url, cache) and resolve_input(url, cache) == got  # an unchanged copy is reused
    got.write_bytes(b"tampered\n")
    with pytest.raises(DataError) as error:
        resolve_input(url, cache)
    assert str(error.value).startswith(f"cached {got} changed since it was downloaded from {url}: sha256 ")
    assert got.read_bytes() == b"tampered\n"  # left for the user to inspect
    # with the published digest the bad copy is replaced by a fresh, checked download
    assert resolve_input(url, cache, sha256=digest).read_bytes() == b"real corpus\n"
    os.remove(got.with_name(got.name + ".sha256"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="toolkit.data.download"):
        resolve_input(url, cache)
    assert "UNVERIFIED: no sha256 given and none recorded at download" in caplog.text
    shutil.rmtree(cache)
