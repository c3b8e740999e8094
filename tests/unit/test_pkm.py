"""Product-key memory: exact product-key search, EmbeddingBag read, sparse/dense updates, masked BatchNorm,
usage metrics."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ConfigError
from toolkit.modules.pkm import PKM_VALUES_PATTERN, PKMConfig, ProductKeyMemory, pkm_param_groups
from toolkit.modules.pkm_metrics import MemoryUsageTracker


def small_cfg(**kw) -> PKMConfig:
    base = dict(mem_size=16**2, key_dim=8, heads=3, knn=5)
    base.update(kw)
    return PKMConfig(**base)


def make(seed: int = 0, d_in: int = 12, d_out: int = 10, **kw) -> ProductKeyMemory:
    torch.manual_seed(seed)
    return ProductKeyMemory(d_in, d_out, small_cfg(**kw))


def test_product_topk_equals_brute_force_over_full_keys():
    mem = make().double().eval()
    torch.manual_seed(1)
    q = mem.query(torch.randn(40, 12, dtype=torch.float64))  # (N, H, key_dim)
    scores, idx = mem.lookup(q)
    # full key of slot i*n + j is [C1_i ; C2_j]
    n, half = mem.n_keys, mem.key_dim // 2
    c1 = mem.keys[:, 0, :, None, :].expand(-1, n, n, half)
    c2 = mem.keys[:, 1, None, :, :].expand(-1, n, n, half)
    full = torch.cat([c1, c2], dim=-1).reshape(mem.heads, n * n, mem.key_dim)
    brute_s, brute_i = torch.einsum("nhd,hmd->nhm", q, full).topk(mem.knn, dim=-1)
    assert torch.equal(idx, brute_i)
    torch.testing.assert_close(scores, brute_s, rtol=0, atol=1e-12)


def test_embedding_bag_read_equals_dense_gather_and_sum():
    mem = make().eval()
    mem.track_usage = True
    x = torch.randn(2, 7, 12)
    out = mem(x)
    q = mem.query(x.reshape(-1, 12))
    scores, idx = mem.lookup(q)
    w = F.softmax(scores.float(), dim=-1)
    assert torch.equal(mem.last_indices, idx)
    dense = (mem.memory_values.weight[idx] * w[..., None]).sum(dim=(1, 2))  # over k and heads
    assert out.shape == (2, 7, 10)
    torch.testing.assert_close(out.reshape(-1, 10), dense, rtol=1e-5, atol=1e-6)


def _one_step(mem: ProductKeyMemory, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor):
    opt.zero_grad()
    (mem(x) * target).sum().backward()
    opt.step()
    return mem.last_indices.unique()


def test_adam_dense_equals_sparse_adam_after_first_step_then_diverges():
    dense, sparse = make(seed=3), make(seed=3, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    dense.track_usage = sparse.track_usage = True
    # tiny eps: SparseAdam adds eps to sqrt(v) before the bias correction, Adam after it (an
    # eps/sqrt(1-beta2) vs eps difference that is visible at lr 1e-2 for small gradients)
    opt_d = torch.optim.Adam([dense.memory_values.weight], lr=1e-2, eps=1e-12)
    opt_s = torch.optim.SparseAdam([sparse.memory_values.weight], lr=1e-2, eps=1e-12)
    before = dense.memory_values.weight.detach().clone()
    torch.manual_seed(4)
    x1, x2 = torch.randn(1, 6, 12), torch.randn(1, 6, 12)
    t1, t2 = torch.randn(1, 6, 10), torch.randn(1, 6, 10)
    touched1 = _one_step(dense, opt_d, x1, t1)
    _one_step(sparse, opt_s, x1, t1)
    assert sparse.memory_values.weight.grad.is_sparse
    w_d, w_s = dense.memory_values.weight.detach(), sparse.memory_values.weight.detach()
    # step 1 from zero state: m/sqrt(v) = g/|g| for both; untouched rows have g = 0 -> no move in either
    torch.testing.assert_close(w_d, w_s, rtol=0, atol=1e-7)
    moved = (w_d != before).any(dim=1).nonzero().squeeze(1)
    assert torch.equal(moved, touched1)
    # step 2: dense Adam keeps moving rows touched only at step 1 (their momentum is non-zero, g = 0);
    # SparseAdam updates only the moments/rows present in this step's gradient
    touched2 = _one_step(dense, opt_d, x2, t2)
    _one_step(sparse, opt_s, x2, t2)
    stale = touched1[~torch.isin(touched1, touched2)]
    assert stale.numel() > 0
    assert not torch.allclose(w_d[stale], w_s[stale])


def test_batchnorm_statistics_ignore_padding():
    mem = make(seed=5)
    mem.query_norm.momentum = 1.0  # running stats = this batch's stats
    torch.manual_seed(6)
    x = torch.randn(3, 5, 12)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = mask[2, 1:] = True
    x[mask] = 100.0  # pad rows would dominate the statistics if they entered them
    out = mem(x, padding_mask=mask)
    lin = mem.query_net[-1]
    pre = x[~mask] @ lin.weight.detach().T + lin.bias.detach()  # independent pre-norm query
    torch.testing.assert_close(mem.query_norm.running_mean, pre.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mem.query_norm.running_var, pre.var(0, unbiased=True), rtol=1e-4, atol=1e-5)
    assert torch.equal(out[mask], torch.zeros(int(mask.sum()), 10))
    # non-pad outputs are those of a batch holding only the non-pad tokens
    torch.testing.assert_close(out[~mask], mem(x[~mask][None])[0], rtol=1e-5, atol=1e-6)


def test_usage_and_kl_metrics_match_hand_computation():
    tracker = MemoryUsageTracker(mem_size=9)
    f64 = dict(dtype=torch.float64)
    tracker.update(torch.tensor([[0, 1], [1, 4]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]], **f64))
    tracker.update(torch.tensor([[4, 8]]), torch.tensor([[0.9, 0.1]], **f64))
    assert tracker.counts.tolist() == [1, 2, 0, 0, 2, 0, 0, 0, 1]
    p = [0.75 / 3, 0.75 / 3, 1.4 / 3, 0.1 / 3]  # slots 0, 1, 4, 8; total weight 3
    assert tracker.usage == pytest.approx(4 / 9)
    assert tracker.kl_uniform == pytest.approx(sum(pi * math.log(pi * 9) for pi in p), rel=1e-12)
    assert tracker.report() == {"pkm_usage": tracker.usage, "pkm_kl_uniform": tracker.kl_uniform}
    tracker.reset()
    assert tracker.usage == 0.0 and math.isnan(tracker.kl_uniform)


def test_tracker_reads_module_usage_only_when_tracking():
    mem = make().eval()
    mem(torch.randn(1, 4, 12))
    assert mem.last_indices is None
    mem.track_usage = True
    mask = torch.tensor([[False, False, True, True]])
    mem(torch.randn(1, 4, 12), padding_mask=mask)
    assert mem.last_indices.shape == (2, 3, 5)  # pad tokens are not counted
    tracker = MemoryUsageTracker(mem.cfg.mem_size)
    tracker.update_from(mem)
    assert tracker.counts.sum() == 2 * 3 * 5
    assert tracker.weight_sums.sum().item() == pytest.approx(2 * 3)  # softmax per head sums to 1


def test_output_shape_and_gradients_reach_keys_query_net_and_values():
    mem = make(query_layers=2, value_dim=6)
    out = mem(torch.randn(2, 5, 12))
    assert out.shape == (2, 5, 10)
    out.square().sum().backward()
    params = dict(mem.named_parameters())
    names = ("keys", "query_net.0.weight", "query_net.2.weight", "query_norm.weight", "memory_values.weight")
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_param_group_pattern_selects_only_values():
    model = nn.ModuleDict({"layer": nn.ModuleDict({"pkm": make(), "ffn": nn.Linear(2, 2)})})
    chosen = [n for n, _ in model.named_parameters() if re.search(PKM_VALUES_PATTERN, n)]
    assert chosen == ["layer.pkm.memory_values.weight"]
    assert pkm_param_groups(small_cfg(sparse=True))["optimizer"] == "sparse_adam"
    assert pkm_param_groups(small_cfg())["lr"] == 1e-3


def test_config_errors_name_the_key():
    square = r"^pkm\.mem_size=200 must be a perfect square \(e\.g\. 512\*\*2=262144\)$"
    with pytest.raises(ConfigError, match=square):
        ProductKeyMemory(4, 4, small_cfg(mem_size=200))
    with pytest.raises(ConfigError, match=r"^pkm\.knn=17 must be in \[1, sqrt\(mem_size\)=16\]$"):
        ProductKeyMemory(4, 4, small_cfg(knn=17))
    with pytest.raises(ConfigError, match=r"^pkm\.key_dim=7 must be a positive even number$"):
        ProductKeyMemory(4, 4, small_cfg(key_dim=7))
