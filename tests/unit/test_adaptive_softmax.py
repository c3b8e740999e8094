"""Adaptive input embeddings and adaptive softmax: exactness against independent computations, ties, grads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.modules.adaptive_input import AdaptiveInput, AdaptiveInputConfig, band_cutoffs, band_dims
from toolkit.modules.adaptive_softmax import AdaptiveSoftmax, AdaptiveSoftmaxConfig

V, D = 30, 16
CUTOFFS = [5, 12]  # bands [0,5) [5,12) [12,30)


def make_pair(tie: bool = False, tie_proj: bool = False, dropout: float = 0.0):
    torch.manual_seed(0)
    adaptive_input = AdaptiveInput(V, D, AdaptiveInputConfig(cutoffs=CUTOFFS, factor=2.0), padding_idx=1)
    cfg = AdaptiveSoftmaxConfig(cutoffs=CUTOFFS, factor=2.0, dropout=dropout, tie=tie, tie_proj=tie_proj)
    return adaptive_input, AdaptiveSoftmax(V, D, cfg, adaptive_input)


def test_band_cutoffs_are_trimmed_to_the_vocabulary():
    assert band_cutoffs([20000, 60000], 267744) == [20000, 60000, 267744]
    assert band_cutoffs([20000, 60000], 30000) == [20000, 30000]
    assert band_cutoffs([20000, 60000], 20000) == [20000]
    assert band_cutoffs([20000, 60000], 10) == [10]
    assert band_cutoffs([], 10) == [10]
    assert band_dims(1024, 4.0, 3) == [1024, 256, 64]


def test_bad_cutoffs_and_factor_are_config_errors():
    with pytest.raises(ConfigError, match=r"^adaptive cutoffs must be positive and strictly increasing, got \[5, 5\]$"):
        band_cutoffs([5, 5], 10)
    with pytest.raises(ConfigError, match=r"^adaptive band 2 has dimension 0 \(d=8, factor=4.0\); use fewer cutoffs$"):
        band_dims(8, 4.0, 3)


def test_adaptive_input_equals_a_lookup_in_the_projected_tables():
    adaptive_input, _ = make_pair()
    assert adaptive_input.dims == [16, 8, 4]
    # independent computation: every band's table projected to D, stacked into one (V, D) matrix
    table = torch.cat([e.weight @ p.weight.T for e, p in zip(adaptive_input.embeddings, adaptive_input.projections)])
    tokens = torch.tensor([[0, 4, 5, 11, 12, 29], [1, 7, 3, 20, 2, 6]])
    out = adaptive_input(tokens)
    assert out.shape == (2, 6, D)
    torch.testing.assert_close(out, table[tokens] * math.sqrt(D))
    assert torch.count_nonzero(out[1, 0]) == 0  # the padding row (id 1) is zero


def test_adaptive_input_with_a_tiny_vocabulary_is_a_plain_embedding():
    torch.manual_seed(0)
    adaptive_input = AdaptiveInput(10, 8, AdaptiveInputConfig(scale=False))  # cutoffs [20000, 60000] dropped
    assert adaptive_input.cutoffs == [10] and len(adaptive_input.embeddings) == 1
    tokens = torch.arange(10)
    expected = adaptive_input.embeddings[0].weight @ adaptive_input.projections[0].weight.T
    torch.testing.assert_close(adaptive_input(tokens), expected)


def independent_log_prob(softmax: AdaptiveSoftmax, hidden: torch.Tensor) -> torch.Tensor:
    """log p(w) = log p_head(w) for head words, log p_head(band) + log p_band(w) for tail words (float64)."""
    h = hidden.double()
    head_w = torch.cat([softmax.head_words, softmax.head_clusters]).double()
    head = torch.softmax(h @ head_w.T, dim=-1)
    c0 = softmax.cutoffs[0]
    probs = [head[:, :c0]]
    for i in range(softmax.n_tails):
        logits = (h @ softmax.tail_proj[i].double()) @ softmax.tail_out[i].double().T
        probs.append(head[:, c0 + i, None] * torch.softmax(logits, dim=-1))
    return torch.cat(probs, dim=1).log()


@pytest.mark.parametrize("tie", [False, True])
def test_log_prob_is_normalised_and_equals_the_factorised_softmax(tie):
    _, softmax = make_pair(tie=tie, tie_proj=tie)
    softmax.eval()
    hidden = torch.randn(2, 7, D)
    log_prob = softmax.log_prob(hidden)
    assert log_prob.shape == (2, 7, V) and log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob.exp().sum(-1), torch.ones(2, 7))
    expected = independent_log_prob(softmax, hidden.view(-1, D))
    torch.testing.assert_close(log_prob.view(-1, V).double(), expected, rtol=1e-5, atol=1e-5)  # float32 vs 64


def test_nll_equals_minus_log_prob_gathered_and_computes_tails_only_for_their_targets(monkeypatch):
    _, softmax = make_pair()
    softmax.eval()
    hidden = torch.randn(3, 8, D)
    target = torch.tensor([[0, 4, 5, 11, 12, 29, 3, 3], [2, 2, 2, 2, 2, 2, 2, 2], [13, 14, 0, 1, 6, 0, 0, 0]])
    rows = {}
    original = softmax.tail_log_prob

    def counting(i, h):
        rows[i] = rows.get(i, 0) + h.shape[0]
        return original(i, h)

    monkeypatch.setattr(softmax, "tail_log_prob", counting)
    nll = softmax.nll(hidden, target)
    assert nll.shape == (3, 8)
    assert rows == {0: 3, 1: 4}  # targets in [5,12): 5, 11, 6; in [12,30): 12, 29, 13, 14
    expected = -softmax.log_prob(hidden).gather(-1, target[..., None]).squeeze(-1)
    torch.testing.assert_close(nll, expected)


def test_empty_cutoffs_equal_a_full_softmax_with_the_same_weights():
    torch.manual_seed(0)
    softmax = AdaptiveSoftmax(V, D, AdaptiveSoftmaxConfig(cutoffs=[]))
    assert softmax.cutoffs == [V] and softmax.n_tails == 0 and softmax.head_clusters is None
    full = torch.nn.Linear(D, V, bias=False)
    full.weight.data.copy_(softmax.head_words.data)
    hidden, target = torch.randn(9, D), torch.randint(0, V, (9,))
    torch.testing.assert_close(softmax.log_prob(hidden), F.log_softmax(full(hidden), dim=-1))
    torch.testing.assert_close(softmax.nll(hidden, target), F.cross_entropy(full(hidden), target, reduction="none"))


def test_ties_share_storage_and_parameters():
    adaptive_input, softmax = make_pair(tie=True, tie_proj=True)
    assert softmax.head_words.data_ptr() == adaptive_input.embeddings[0].weight.data_ptr()
    for i in range(2):
        assert softmax.tail_out[i].data_ptr() == adaptive_input.embeddings[i + 1].weight.data_ptr()
        assert softmax.tail_proj[i].data_ptr() == adaptive_input.projections[i + 1].weight.data_ptr()
    shared = {id(p) for p in adaptive_input.parameters()}
    own = [p for p in softmax.parameters() if id(p) not in shared]
    assert [p.shape for p in own] == [torch.Size([2, D])]  # only the tail-band logits of the head
    _, untied = make_pair()
    assert sum(p.numel() for p in untied.parameters()) == 5 * 16 + 2 * 16 + (16 * 8 + 7 * 8) + (16 * 4 + 18 * 4)


def test_tie_errors_name_the_mismatch():
    adaptive_input = AdaptiveInput(V, D, AdaptiveInputConfig(cutoffs=[5, 12], factor=4.0))
    with pytest.raises(
        ConfigError,
        match=r"^cannot tie adaptive softmax \(cutoffs \[5, 12, 30\], dims \[16, 8, 4\]\) "
        r"to adaptive input \(cutoffs \[5, 12, 30\], dims \[16, 4, 1\]\)",
    ):
        AdaptiveSoftmax(V, D, AdaptiveSoftmaxConfig(cutoffs=[5, 12], factor=2.0, tie=True), adaptive_input)
    with pytest.raises(ConfigError, match=r"^adaptive softmax tie/tie_proj=true needs the model's AdaptiveInput"):
        AdaptiveSoftmax(V, D, AdaptiveSoftmaxConfig(tie=True))


def test_gradient_flows_through_tied_input_and_softmax():
    adaptive_input, softmax = make_pair(tie=True, tie_proj=True, dropout=0.1)
    layer = torch.nn.Linear(D, D)
    tokens = torch.tensor([[0, 4, 5, 11, 12, 29, 1, 7]])
    target = torch.tensor([[4, 5, 11, 12, 29, 3, 7, 20]])
    loss = softmax.nll(layer(adaptive_input(tokens)), target).sum()
    loss.backward()
    params = list(adaptive_input.parameters()) + list(softmax.parameters()) + list(layer.parameters())
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in params)
