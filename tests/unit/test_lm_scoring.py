"""Sliding-window scoring scores every target exactly once, with the history the protocol promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.eval.lm_scoring import score_stream, window_plan


@pytest.mark.parametrize(
    "n, window, stride", [(10, 4, 4), (10, 4, 2), (10, 4, 1), (3, 8, 8), (11, 4, 3), (1000, 64, 17)]
)
def test_every_target_scored_once(n, window, stride):
    starts, first = window_plan(n, window, stride)
    covered = np.zeros(n, dtype=int)
    for start, skip in zip(starts, first):
        covered[start + skip : start + min(window, n)] += 1
        if start > 0:  # after the first window, each scored target has >= window - stride tokens of history
            assert skip >= min(window, n) - stride
    assert (covered == 1).all()


def test_score_stream_matches_per_target_history():
    """With a 'model' whose logits depend only on the last token, the score is a simple lookup."""
    torch.manual_seed(0)
    table = torch.randn(5, 5)
    tokens = np.random.default_rng(0).integers(0, 5, size=200)
    nll, count = score_stream(lambda x: table[x], tokens, window=16, stride=5, batch_size=3)
    logp = torch.log_softmax(table, dim=-1)
    expected = -logp[torch.from_numpy(tokens[:-1]), torch.from_numpy(tokens[1:])].sum().item()
    assert count == 199
    assert nll == pytest.approx(expected, rel=1e-6)
