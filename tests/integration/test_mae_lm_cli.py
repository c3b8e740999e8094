"""MAE in a decoder LM: its gates' statistics in the training log and `tk-analyze gates` on its checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import read_log, tiny_char_args
from toolkit.cli.train import main as train_main

# 2 layers of 4 heads (4 experts of 3 heads each), gate hidden size 8
MAE_LM = {"model.n_layers": 2, "model.n_heads": 4, "model.attention": "{name: mae, gate_hidden: 8}"}


@pytest.fixture(scope="module")
def mae_lm_run(text8_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("mae_lm") / "run"
    assert train_main(tiny_char_args(text8_small, run, max_update=3, **MAE_LM)) == 0
    return run


def test_the_gates_of_every_layer_are_logged(mae_lm_run):
    row = read_log(mae_lm_run)[-1]
    for layer in ("layer0", "layer1"):
        assert 0.0 < row[f"mae/{layer}/entropy"] <= math.log(4) + 1e-6
        assert 0.25 - 1e-6 <= row[f"mae/{layer}/top_usage"] <= 1.0
        assert 0.0 < row[f"mae/{layer}/usage_entropy"] <= math.log(4) + 1e-6


def test_gate_analysis_of_an_lm_averages_every_position_of_the_windows(mae_lm_run, tmp_path):
    from toolkit.eval.gate_analysis import analyze_gates, load_run

    out, checkpoint = tmp_path / "gates", str(mae_lm_run / "checkpoint_last.pt")
    report = analyze_gates(checkpoint, "valid", str(out), {"max_sentences": 7, "batch_size": 3})
    saved = json.loads((out / "gates.json").read_text())
    assert saved["layers"] == ["layer0", "layer1"] and saved["sentences"] == 7
    assert saved["mean_gate"] == report["mean_gate"] and saved["rows"] == [7 * 33, 7 * 33]
    # independently: each window of 33 characters alone, every position's gate row averaged
    task, model, _ = load_run(checkpoint, None, "cpu")
    tokens = torch.from_numpy(np.asarray(task.splits["valid"][: 7 * 33], dtype=np.int64)).view(7, 33)
    rows: dict[str, list] = {name: [] for name in saved["layers"]}
    for window in tokens:
        with torch.no_grad():
            model(window[None])
        for name, module in model.mae_modules().items():
            rows[name].append(module.last_gate.reshape(-1, 4).double())
    expected = [torch.cat(rows[name]).mean(0).tolist() for name in saved["layers"]]
    np.testing.assert_allclose(saved["mean_gate"], expected, rtol=0, atol=1e-6)
