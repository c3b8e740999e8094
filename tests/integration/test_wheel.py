"""A wheel of the package carries the presets: built from a copy of the checkout, installed into a fresh virtual
environment, its tk-train lists them and dry-runs one from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def clean_env() -> dict[str, str]:
    """The environment without anything that would import the checkout instead of the installed wheel."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOOLKIT_CONFIG_DIR", "TOOLKIT_CONFIG_PATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_wheel_installed_outside_the_checkout_lists_and_dry_runs_presets(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO / "toolkit", source / "toolkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = clean_env()

    def run(*command: str | Path) -> subprocess.CompletedProcess:
        result = subprocess.run([str(c) for c in command], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run(
        sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist"
    )
    (wheel,) = (tmp_path / "dist").glob("toolkit-*.whl")
    venv = tmp_path / "venv"  # torch, Hydra, ... from this interpreter's site-packages; the toolkit from the wheel
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)

    installed = Path(run(python, "-c", "import toolkit; print(toolkit.__file__)").stdout.strip()).parent
    assert installed.is_relative_to(venv) and (installed / "configs" / "config" / "t64" / "t12_text8.yaml").is_file()
    help_text = run(venv / "bin" / "tk-train", "--help").stdout
    assert "  t64/: t12_enwik8, t12_text8," in help_text and "  adaptive_span/: enwik8," in help_text
    result = run(
        venv / "bin" / "tk-train", "config=baselines/transformer_lm_text8_tiny", "dry_run=true", "data=/nonexistent"
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["model"], summary["vocab_size"], summary["parameters"]) == ("transformer_lm", 27, 1_718_016)
