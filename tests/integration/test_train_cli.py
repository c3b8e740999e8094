"""tk-train's command line: presets, config errors (exit 2, one line), help, --cfg job, dry run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from toolkit.cli.train import main as train_main


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli.train", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "error: no config given: pass config=NAME, one of: "),
        (["config=text8_char_tiy"], "error: unknown config 'text8_char_tiy' (did you mean: text8_char_tiny"),
        (["config=text8_char_tiny", "max_updat=3"], "error: unknown key 'max_updat' (did you mean: max_update?)"),
        (
            ["config=text8_char_tiny", "model.n_layer=3"],
            "error: unknown key 'model.n_layer' (did you mean: model.n_layers",
        ),
        (["config=text8_char_tiny", "max_update=many"], "error: wrong type for key 'max_update'"),
        (["config=text8_char_tiny", "model=gpt9"], "error: unknown model 'gpt9'"),
        (
            ["config=text8_char_tiny", "data=null", "run_dir=/nonexistent/x"],
            "error: missing required value for key 'data'",
        ),
        (["config=text8_char_tiny", "max_update"], "error: expected key=value, got 'max_update'"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1


def test_errors_list_presets(capsys):
    assert train_main(["config=nope"]) == 2
    assert "baselines/transformer_lm_text8_tiny" in capsys.readouterr().err


def test_help_lists_groups_and_presets(capsys):
    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in (
        "model:",
        "task:",
        "optimizer:",
        "lr_scheduler:",
        "criterion:",
        "text8_char_tiny",
        "text8_t12",
        "transformer_lm",
    ):
        assert word in out


def test_cfg_job_prints_resolved_config(capsys):
    assert train_main(["config=text8_char_tiny", "model.n_layers=3", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "n_layers: 3" in out and "tokens_per_sample: 128" in out


def test_dry_run_without_data_reports_parameters():
    """Works before any data is prepared: the vocabulary size comes from the preset."""
    result = run_train("config=text8_t12", "dry_run=true", "data=/nonexistent")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "transformer_lm"
    d, ff, layers, vocab, positions = 512, 2048, 12, 27, 512
    per_layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # two LayerNorms
    expected = layers * per_layer + vocab * d + positions * d + 2 * d  # tied output, final LayerNorm
    assert summary["parameters"] == expected
