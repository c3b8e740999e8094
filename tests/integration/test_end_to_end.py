"""Through the installed entry points: preprocess the shipped sample, train a few dozen updates, evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.conftest import TEXT8_SAMPLE


def run(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(args[0])
    assert exe is not None, f"{args[0]} is not installed (pip install -e .)"
    result = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_preprocess_train_eval(tmp_path):
    data, run_dir = tmp_path / "text8", tmp_path / "run"
    run("tk-preprocess", "config=text8", f"input={TEXT8_SAMPLE}", f"destdir={data}")
    meta = json.loads((data / "meta.json").read_text())
    assert meta["splits"]["test"]["tokens"] == 250_000
    tiny = [
        "model.n_layers=1",
        "model.d_model=64",
        "model.n_heads=2",
        "model.d_ff=128",
        "task.tokens_per_sample=64",
        "task.batch_size=8",
        "task.valid_max_tokens=5000",
        "task.eval_batch_size=64",
        "lr_scheduler.warmup_updates=5",
    ]
    result = run(
        "tk-train",
        "config=text8_char_tiny",
        f"data={data}",
        f"run_dir={run_dir}",
        "max_update=30",
        "validate_interval=15",
        "save_interval=15",
        "final_subset=valid",
        *tiny,
    )
    assert "model transformer_lm:" in result.stderr  # every run logs the model and its parameter count
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["subset"] == "valid" and final["tokens"] == 249_999 and final["bpc"] < 4.75  # log2(27)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "command.json").is_file()
    assert any((run_dir / "tb").iterdir())
    result = run("tk-eval", f"checkpoint={run_dir / 'checkpoint_best.pt'}", "subset=valid", "task.eval_stride=32")
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["stride"] == 32 and metrics["tokens"] == 249_999
    assert abs(metrics["bpc"] - final["bpc"]) < 0.05  # more context per character, nearly the same score
