"""A small LM built like the Quickstart learns more than a bigram table within a fixed, small budget.

Guards against a slow-learning initialisation coming back silently: with the old scheme (scaled, tied
embeddings whose positions are 16x smaller than the tokens) the same run stays above the bigram level.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_char_args
from toolkit.config.compose import compose_train_config
from toolkit.eval.ngram_reference import ngram_references
from toolkit.train.run import single_process_trainer

UPDATES = 200
SCORED = 5000  # first validation characters scored


def valid_bpc_after_training(data, run_dir, **overrides) -> tuple[float, dict]:
    args = tiny_char_args(
        data,
        run_dir,
        **{
            "model.n_layers": 1,
            "model.d_model": 128,
            "model.n_heads": 4,
            "model.d_ff": 256,
            "model.dropout": 0.0,
            "task.tokens_per_sample": 32,
            "task.batch_size": 16,
            "optimizer.lr": 0.003,
            "max_update": UPDATES,
            "task.valid_max_tokens": SCORED,
            **overrides,
        },
    )
    cfg = compose_train_config("text8_char_tiny", args[1:])
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = single_process_trainer(cfg, run_dir)
    for _ in range(UPDATES):
        trainer.train_step()
    trainer.model.eval()
    metrics = trainer.task.evaluate(trainer.model, "valid", torch.device("cpu"), during_training=True)
    references = ngram_references(trainer.task.splits["train"], trainer.task.splits["valid"][:SCORED], 27)
    return metrics["bpc"], references


@pytest.mark.parametrize("positions", ["learned", "rotary"])  # the Quickstart's rotary, its base's learned table
def test_quickstart_scheme_falls_below_the_bigram_level_in_200_updates(text8_small, tmp_path, positions):
    bpc, references = valid_bpc_after_training(text8_small, tmp_path / "run", **{"model.positions": positions})
    assert references["trigram"] < references["bigram"] < references["unigram"]
    assert bpc < references["bigram"] - 0.05, (bpc, references)
