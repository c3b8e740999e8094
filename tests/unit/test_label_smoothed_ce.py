"""Label-smoothed cross-entropy against an explicit smoothed target distribution and PyTorch's own loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyConfig, label_smoothed_nll
from toolkit.registry import CRITERIONS

PAD = 1


def batch(seed: int = 0, b: int = 3, t: int = 5, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    target = torch.randint(2, v, (b, t), generator=g)
    target[0, 3:] = PAD
    target[2, 4:] = PAD
    return logits, target


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_equals_cross_entropy_against_the_smoothed_distribution(eps):
    logits, target = batch()
    v = logits.size(-1)
    lprobs = F.log_softmax(logits, -1)
    q = torch.full_like(lprobs, eps / (v - 1))  # fairseq: eps spread over the V-1 other classes
    q.scatter_(-1, target[..., None], 1 - eps)
    keep = target.ne(PAD)
    expected_loss = -(q * lprobs).sum(-1)[keep].sum()
    expected_nll = -lprobs.gather(-1, target[..., None]).squeeze(-1)[keep].sum()
    loss, nll = label_smoothed_nll(lprobs, target, eps, PAD)
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(nll, expected_nll, rtol=0, atol=1e-12)
    # PyTorch spreads s/V over all classes: the same loss with s = eps * V / (V - 1)
    torch_loss = F.cross_entropy(
        logits.reshape(-1, v), target.reshape(-1), ignore_index=PAD, reduction="sum", label_smoothing=eps * v / (v - 1)
    )
    torch.testing.assert_close(loss, torch_loss, rtol=0, atol=1e-10)


class FixedLogits(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, src_tokens, prev_output_tokens):
        return self.logits, {}


def test_registered_criterion_reports_loss_nll_and_sample_size():
    logits, target = batch(seed=1)
    ntokens = int(target.ne(PAD).sum())
    entry = CRITERIONS.get("label_smoothed_cross_entropy")
    assert entry.config_cls is LabelSmoothedCrossEntropyConfig
    assert LabelSmoothedCrossEntropyConfig().label_smoothing == 0.1
    criterion = entry.builder(LabelSmoothedCrossEntropyConfig(), SimpleNamespace(pad_idx=PAD), None)
    sample = {"net_input": {"src_tokens": None, "prev_output_tokens": None}, "target": target, "ntokens": ntokens}
    loss, sample_size, logs = criterion(FixedLogits(logits), sample, step=0)
    expected, expected_nll = label_smoothed_nll(F.log_softmax(logits.float(), -1), target, 0.1, PAD)
    assert sample_size == ntokens == 12
    torch.testing.assert_close(loss, expected)
    assert logs["loss"] == pytest.approx(float(expected)) and logs["ntokens"] == ntokens
    flat = logits.reshape(-1, logits.size(-1))
    nll = F.cross_entropy(flat, target.reshape(-1), ignore_index=PAD, reduction="sum")
    assert logs["nll_loss"] == pytest.approx(float(nll), rel=1e-6)
    assert logs["nll_loss"] == pytest.approx(float(expected_nll), rel=1e-12)
