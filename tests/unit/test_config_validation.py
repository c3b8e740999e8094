"""Every setting is checked before any work: one line, exit code 2, and no run folder written."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from tests.conftest import only_error_line, tiny_char_args
from toolkit.cli.preprocess import main as preprocess_main
from toolkit.cli.train import main as train_main
from toolkit.config.cli_overrides import build_config
from toolkit.config.compose import compose_train_config, config_dir
from toolkit.config.ranges import Range, bounded, check_ranges
from toolkit.data.recipes.char import Text8Config
from toolkit.errors import ConfigError


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    return only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_update=-1", "max_update=-1 must be >= 1"),
        ("save_interval=-5", "save_interval=-5 must be >= 0"),
        ("distributed.world_size=0", "distributed.world_size=0 must be >= 1"),
        ("progress=fancy", "progress: 'fancy' (valid: auto, bar, plain)"),
        ("precision=fp8", "precision: 'fp8' (valid: fp32, bf16, fp16)"),
        ("final_subset=tst", "final_subset: 'tst' (valid: train, valid, test)"),
        ("task.batch_size=0", "task.batch_size=0 must be >= 1"),
        ("task.tokens_per_sample=0", "task.tokens_per_sample=0 must be >= 1"),
        ("update_freq=0", "update_freq=0 must be >= 1"),
        ("log_interval=0", "log_interval=0 must be >= 1"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0 must be >= 0"),
        (
            "aux_weights.span_l1=0.5",
            "aux_weights.span_l1: model transformer_lm has no auxiliary term of that name (it has none)",
        ),
        (
            "aux_weights.x.kind=wiggle",
            "aux_weights.x.kind: 'wiggle' (valid: constant, step_off, linear_decay, linear_warmup)",
        ),
        ("aux_weights.x.end=-3", "aux_weights.x.end=-3 must be >= 0"),
        ("param_groups.emb.optimizer.lr=-2", "param_groups.emb.optimizer.lr=-2.0 must be >= 0"),
        ("phases.unit=step", "phases.unit: 'step' (valid: update, epoch)"),
        ("phases.budget=epochs", "phases.budget: 'epochs' (valid: updates, main_updates)"),
        ("compile_backend=tvm", "compile_backend: 'tvm' (valid: inductor, aot_eager, eager)"),
        ("device=tpu", "device: 'tpu' (valid: auto, cpu, cuda)"),
        ("checkpoint_sanity_factor=0.5", "checkpoint_sanity_factor=0.5 must be >= 1"),
        ("init_from_min_fraction=2", "init_from_min_fraction=2.0 must be <= 1 and >= 0"),
        ("run_dir='abc", "run_dir='abc: not a valid value (found unexpected end of stream; quote text with '...')"),
        (
            "train_only=[",
            "train_only=[: not a valid value (expected the node content, but found '<stream end>'; "
            "quote text with '...')",
        ),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_bad_settings_stop_before_the_run_folder(text8_small, tmp_path, capsys, override, message, dry_run):
    run = tmp_path / "run"
    args = [*tiny_char_args(text8_small, run), f"dry_run={str(dry_run).lower()}", override]
    assert train_main(args) == 2
    assert one_line_error(capsys) == f"error: {message}"
    assert not run.exists()  # no config.yaml, nothing at all


def test_text_fields_keep_the_text_typed(capsys):
    assert train_main(["config=text8_char_tiny", "run_dir=0042", "data=1e3", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "run_dir: '0042'" in out and "data: '1e3'" in out  # YAML 1.1 would read 0042 as octal 34
    digits = "0" * 63 + "7"
    cfg = build_config(Text8Config, ["input=x", "destdir=y", f"sha256={digits}"])
    assert cfg.sha256 == digits and build_config(Text8Config, ["input=x", "destdir=y", "sha256=null"]).sha256 is None
    cfg = compose_train_config("text8_char_tiny", ["train_only='0042'", "final_subset=null", "seed=0042"])
    assert cfg.train_only == "0042" and cfg.final_subset is None and cfg.seed == 34  # an int field reads YAML


def test_a_bad_value_is_one_line_in_every_cli(tmp_path, capsys):
    from toolkit.cli.eval import main as eval_main

    assert preprocess_main(["config=text8", "input='abc", f"destdir={tmp_path / 'out'}"]) == 2
    assert one_line_error(capsys).startswith("error: input='abc: not a valid value (")
    assert eval_main(["checkpoint=[", "device=cpu"]) == 2
    assert one_line_error(capsys).startswith("error: checkpoint=[: not a valid value (")
    assert preprocess_main(["config=iwslt14_sample", "vocab_size=3", f"destdir={tmp_path / 'out'}"]) == 2
    assert one_line_error(capsys) == "error: vocab_size=3 must be >= 8"
    assert preprocess_main(["config=wmt14_en_de", "clean_tokenizer=spaces", f"destdir={tmp_path / 'out'}"]) == 2
    assert one_line_error(capsys) == "error: clean_tokenizer: 'spaces' (valid: moses, whitespace)"
    assert not (tmp_path / "out").exists()


def test_run_dir_that_is_a_file_or_under_one(text8_small, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    for run_dir, where in ((taken, "is a file"), (taken / "run", f"is under {taken}, which is a file")):
        assert train_main(tiny_char_args(text8_small, run_dir)) == 2
        assert one_line_error(capsys) == f"error: run_dir={run_dir}: {where}, not a folder"
    assert taken.read_text() == "mine\n"


def test_read_only_run_dir(text8_small, tmp_path, capsys, monkeypatch):
    """Root writes through chmod 0500, so the probe's refusal is simulated as a read-only file system gives it."""
    import toolkit.data.atomic as atomic

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", refuse)
    run = tmp_path / "runs" / "a"
    assert train_main(tiny_char_args(text8_small, run)) == 2
    assert one_line_error(capsys) == f"error: run_dir={run}: cannot write in {tmp_path} (Read-only file system)"
    assert sorted(tmp_path.iterdir()) == []


@pytest.fixture
def config_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped configs that the composer reads instead (to add broken presets)."""
    folder = tmp_path / "configs"
    shutil.copytree(config_dir(), folder)
    monkeypatch.setenv("TOOLKIT_CONFIG_DIR", str(folder))
    return folder


@pytest.mark.parametrize(
    "text, message",
    [
        (
            b"defaults:\n  - text8_char_tiny\n  - _self_\nmax_update: [1\nseed: 2\n",
            "{path}, line 5: not valid YAML: expected ',' or ']', but got ':'",
        ),
        (
            b"defaults:\n  - text8_char_tiny\n  - _self_\nmodel:\n\tn_layers: 2\n",
            "{path}, line 6: not valid YAML: found character '\\t' that cannot start any token "
            "(YAML indents with spaces, not tabs)",
        ),
        (
            b"defaults:\n  - text8_char_tiny\n  - _self_\nrun_dir: runs/caf\xe9\n",
            "{path}, line 5: not valid UTF-8 (byte 0xe9)",
        ),
        (
            b"defaults:\n  - override /model: gpt9\n  - _self_\n",
            "preset 'broken': unknown model 'gpt9'; valid: char_transformer, streaming_lm, transformer, "
            "transformer_base, transformer_big, transformer_iwslt_de_en, transformer_lm",
        ),
        (
            b"defaults:\n  - text8_char_tny\n  - _self_\n",
            "preset 'broken': {path} selects unknown config 'text8_char_tny' (did you mean: text8_char_tiny",
        ),
    ],
)
def test_broken_preset_files_are_one_line(config_copy, tmp_path, capsys, text, message):
    path = config_copy / "config" / "broken.yaml"
    path.write_bytes(b"# @package _global_\n" + text)
    run = tmp_path / "run"
    assert train_main(["config=broken", f"run_dir={run}"]) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: " + message.format(path=path)), line
    assert not run.exists()


def test_ranges_declared_on_a_new_field():
    """How a component declares a range: `bounded(default, ge=..., lt=...)` in its dataclass."""
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    @dataclass
    class Example:
        rate: float = bounded(0.1, ge=0, lt=1)
        count: int = bounded(3, gt=0)

    cfg = OmegaConf.structured(Example)
    check_ranges(cfg)
    cfg.rate = 1.0
    with pytest.raises(ConfigError, match=r"^rate=1.0 must be < 1 and >= 0$"):
        check_ranges(cfg)
    assert Range(gt=0).problem(0) == "must be > 0" and Range(le=5).problem(5) is None


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("eval", ["checkpoint=none.pt", "device=tpu"], "device: 'tpu' (valid: auto, cpu, cuda)"),
        (
            "eval",
            ["checkpoint=none.pt", "compile=true", "compile_backend=tvm"],
            "compile_backend: 'tvm' (valid: inductor, aot_eager, eager)",
        ),
        ("translate", ["checkpoint=none.pt", "device=gpu"], "device: 'gpu' (valid: auto, cpu, cuda)"),
        ("translate", ["checkpoint=none.pt", "batch_size=0"], "batch_size=0 must be >= 1"),
        ("analyze", ["gates", "checkpoint=none.pt", "device=tpu"], "device: 'tpu' (valid: auto, cpu, cuda)"),
    ],
)
def test_eval_translate_and_analyze_choices_are_checked_first(tmp_path, capsys, command, args, message):
    """Checked before the (missing) checkpoint is looked at."""
    import importlib

    main = importlib.import_module(f"toolkit.cli.{command}").main
    assert main(args) == 2
    assert one_line_error(capsys) == f"error: {message}"
