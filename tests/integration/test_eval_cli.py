"""tk-eval's bpc equals an independent computation on a tiny trained model."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from tests.conftest import tiny_char_args
from toolkit.cli.eval import main as eval_main
from toolkit.cli.train import main as train_main
from toolkit.data.char_corpus import load_char_split
from toolkit.models.transformer_lm import TransformerLM
from toolkit.train.checkpoint import load_checkpoint


def test_bpc_equals_independent_computation(text8_small, tmp_path, capsys):
    run = tmp_path / "run"
    # 99 divides the 9,999 test targets, so non-overlapping windows cover the split exactly
    assert train_main(tiny_char_args(text8_small, run, max_update=5, **{"task.tokens_per_sample": 99})) == 0
    capsys.readouterr()
    assert eval_main([f"checkpoint={run / 'checkpoint_last.pt'}", "subset=test", "device=cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    state = load_checkpoint(run / "checkpoint_last.pt")
    cfg = OmegaConf.create(state["config"])
    model = TransformerLM(cfg.model, 27)
    model.load_state_dict(state["model"])
    model.eval()
    test = torch.from_numpy(np.asarray(load_char_split(text8_small, "test"), dtype=np.int64))
    blocks = test[:-1].view(-1, 99), test[1:].view(-1, 99)
    with torch.no_grad():
        logits, _ = model(blocks[0])
        nll = F.cross_entropy(logits.reshape(-1, 27).double(), blocks[1].reshape(-1), reduction="sum").item()
    assert metrics["tokens"] == 9_999 == test.numel() - 1
    assert math.isclose(metrics["bpc"], nll / 9_999 / math.log(2), rel_tol=1e-6)

    # another data folder that does not exist: the task names it and what it needs, in one line
    assert eval_main([f"checkpoint={run / 'checkpoint_last.pt'}", "data=/nonexistent", "device=cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: data=/nonexistent: no such folder; task char_lm needs a character-level dataset "
        "(tk-preprocess config=text8 or config=enwik8)"
    )
    assert eval_main([f"checkpoint={run / 'checkpoint_last.pt'}", "task.eval_protocol=quick", "device=cpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: task.eval_protocol: 'quick' (valid: windows, exact, fast, stream)"


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert eval_main([]) == 2
    assert capsys.readouterr().err.strip() == "error: missing required value for key 'checkpoint'"
    assert eval_main([f"checkpoint={tmp_path / 'none.pt'}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint not found: {tmp_path / 'none.pt'}"
