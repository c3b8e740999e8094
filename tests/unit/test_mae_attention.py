"""MAE attention against independent computations: per-head terms and per-expert sums done by hand here."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ConfigError
from toolkit.modules.attention.base import MultiheadAttention, reorder_cache
from toolkit.modules.attention.mae import MAEAttention, MAEConfig, set_mae_mode
from toolkit.modules.attention.mae_gate import GATE_PARAM_PATTERN, expert_membership, expert_usage, gate_entropy

D = 32
GATE_WEIGHTS = ("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight")
DTYPE = torch.float64  # tight tolerances for the algebraic identities


def make(n_heads: int = 4, drop: int = 1, **kw) -> MAEAttention:
    torch.manual_seed(0)
    causal_gate = kw.pop("causal_gate", None)
    return MAEAttention(D, n_heads, cfg=MAEConfig(drop=drop, **kw), causal_gate=causal_gate).to(DTYPE).eval()


def inputs(b: int = 3, t: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def head_terms(m: MultiheadAttention, query, key=None, key_padding_mask=None, causal=False) -> torch.Tensor:
    """(B, H, T, D): head i's attention output through its slice of W_O, no bias; written out by hand."""
    key = query if key is None else key
    b, t, _ = query.shape
    s, h = key.size(1), m.n_heads
    dh = D // h
    w_q, w_k, w_v = m.qkv_proj.weight.chunk(3)  # the stacked projections, one d x d block each
    b_q, b_k, b_v = m.qkv_proj.bias.chunk(3)
    q = F.linear(query, w_q, b_q).view(b, t, h, dh).permute(0, 2, 1, 3)
    k = F.linear(key, w_k, b_k).view(b, s, h, dh).permute(0, 2, 1, 3)
    v = F.linear(key, w_v, b_v).view(b, s, h, dh).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if causal:
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), float("-inf"))
    w_o = m.out_proj.weight.view(D, h, dh)  # input columns are the concatenated heads
    return torch.einsum("bhtd,ohd->bhto", torch.softmax(scores, -1) @ v, w_o)


def ref_gate(m: MAEAttention, x, padding_mask=None, causal=False) -> torch.Tensor:
    """The paper's gate with explicit per-row means (loops are fine here)."""
    keep = torch.ones(x.shape[:2], dtype=torch.bool) if padding_mask is None else ~padding_mask

    def mean(i: int, end: int) -> torch.Tensor:
        rows = x[i, :end][keep[i, :end]]
        return rows.mean(0) if len(rows) else x.new_zeros(D)

    b, t = x.shape[:2]
    if causal:
        pooled = torch.stack([torch.stack([mean(i, j + 1) for j in range(t)]) for i in range(b)])
    else:
        pooled = torch.stack([mean(i, t) for i in range(b)])
    g = m.mae_gate
    return torch.softmax(g.fc2(torch.tanh(g.fc1(torch.tanh(pooled)))), -1)


def kept_heads(n_heads: int, drop: int) -> list[list[int]]:
    return [[i for i in range(n_heads) if i not in d] for d in itertools.combinations(range(n_heads), drop)]


def expert_sum(m: MAEAttention, terms: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_j g_j * h/(h-k) * sum_{i in expert j} H_i + bias, one expert at a time. g: (B, E) or (B, T, E)."""
    h, k = m.n_heads, m.cfg.drop
    g = g[:, None, :] if g.dim() == 2 else g
    out = torch.zeros_like(terms[:, 0])
    for j, heads in enumerate(kept_heads(h, k)):
        out = out + g[..., j, None] * (h / (h - k)) * terms[:, heads].sum(1)
    return out + m.out_proj.bias


def one_expert(m: MAEAttention, terms: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Output of single experts; experts: (B,) or (B, T) indices."""
    return expert_sum(m, terms, nn.functional.one_hot(experts, m.n_experts).to(terms.dtype))


def test_membership_lists_every_subset_in_combinations_order():
    m = expert_membership(8, 2)
    assert m.shape == (28, 8) and torch.equal(m.sum(1), torch.full((28,), 6.0))
    expected = torch.zeros(28, 8)
    for j, heads in enumerate(kept_heads(8, 2)):
        expected[j, heads] = 1
    assert torch.equal(m, expected)
    assert torch.equal(expert_membership(8, 1), 1 - torch.eye(8))  # MAE-7: expert j drops head j


@pytest.mark.parametrize("drop", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_uniform_gate_equals_plain_mha(drop, causal):
    torch.manual_seed(0)
    mha = MultiheadAttention(D, 8).eval()
    mae = MAEAttention(D, 8, cfg=MAEConfig(drop=drop)).eval()
    missing = mae.load_state_dict(mha.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"mae_gate.{w}" for w in GATE_WEIGHTS]
    nn.init.zeros_(mae.mae_gate.fc2.weight), nn.init.zeros_(mae.mae_gate.fc2.bias)
    x, pad = inputs().float(), torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 6])
    expected = mha(x, key_padding_mask=pad, causal=causal)
    torch.testing.assert_close(mae(x, key_padding_mask=pad, causal=causal), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("n_heads,drop", [(4, 1), (4, 2), (8, 1), (8, 2)])
def test_reweighting_equals_explicit_sum_over_experts(n_heads, drop):
    m = make(n_heads, drop)
    x, pad = inputs(), torch.tensor([[False] * 6, [False] * 3 + [True] * 3, [False] * 5 + [True]])
    out = m(x, key_padding_mask=pad)
    g = ref_gate(m, x, pad)
    torch.testing.assert_close(m.last_gate, g, rtol=0, atol=1e-12)
    expected = expert_sum(m, head_terms(m, x, key_padding_mask=pad), g)
    keep = ~pad
    torch.testing.assert_close(out[keep], expected[keep], rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_heads,drop", [(4, 2), (8, 1)])
def test_causal_reweighting_uses_per_position_prefix_gates(n_heads, drop):
    m = make(n_heads, drop)
    x, pad = inputs(), torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 5 + [True]])
    out = m(x, causal=True, key_padding_mask=pad)
    g = ref_gate(m, x, pad, causal=True)
    assert m.last_gate.shape == (3, 6, m.n_experts) and torch.equal(m.last_gate_padding, pad)
    torch.testing.assert_close(m.last_gate, g, rtol=0, atol=1e-12)
    expected = expert_sum(m, head_terms(m, x, key_padding_mask=pad, causal=True), g)
    torch.testing.assert_close(out[~pad], expected[~pad], rtol=0, atol=1e-12)
    expected = expert_sum(m, head_terms(m, x, causal=True), ref_gate(m, x, causal=True))  # no padding
    torch.testing.assert_close(m(x, causal=True), expected, rtol=0, atol=1e-12)


def test_gate_ignores_padding():
    m = make(8, 2)
    x, pad = inputs(), torch.tensor([[False] * 6, [False] * 2 + [True] * 4, [False] * 4 + [True] * 2])
    out = m(x, key_padding_mask=pad)
    gate = m.last_gate
    x2 = x.clone()
    x2[pad] = 100.0 * torch.randn(int(pad.sum()), D, dtype=DTYPE)
    out2 = m(x2, key_padding_mask=pad)
    assert torch.equal(m.last_gate, gate)
    torch.testing.assert_close(out2[~pad], out[~pad], rtol=0, atol=1e-12)


def test_cross_attention_gate_reads_query_padding_not_key_padding():
    m = make(4, 1, causal_gate=False)
    x, memory = inputs(t=5), inputs(t=7, seed=2)
    qpad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 5])
    kpad = torch.tensor([[False] * 7, [False] * 7, [False] * 2 + [True] * 5])
    out = m(x, memory, key_padding_mask=kpad, query_padding_mask=qpad)
    g = ref_gate(m, x, qpad)
    torch.testing.assert_close(m.last_gate, g, rtol=0, atol=1e-12)
    expected = expert_sum(m, head_terms(m, x, memory, key_padding_mask=kpad), g)
    torch.testing.assert_close(out[~qpad], expected[~qpad], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cross", [False, True])
def test_causal_gate_changing_a_later_token_changes_no_earlier_output(cross):
    m = make(8, 1)
    x, memory = inputs(t=8), inputs(t=5, seed=2)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(3, 3, D, dtype=DTYPE)
    if cross:  # encoder-decoder attention: static_kv makes the gate causal
        out, out2 = m(x, memory, static_kv=True), m(x2, memory, static_kv=True)
    else:
        out, out2 = m(x, causal=True), m(x2, causal=True)
    assert torch.equal(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def run_steps(m, x, cache, memory=None, chunks=(1, 1, 2, 1, 1)):
    outs, start = [], 0
    for n in chunks:
        step = x[:, start : start + n]
        if memory is None:
            outs.append(m(step, causal=True, cache=cache))
        else:
            outs.append(m(step, memory, static_kv=True, cache=cache))
        start += n
    return torch.cat(outs, 1)


@pytest.mark.parametrize("cross", [False, True])
def test_incremental_decoding_equals_full_recomputation(cross):
    m = make(4, 2)
    x, memory = inputs(), (inputs(t=5, seed=2) if cross else None)
    full = m(x, causal=True) if memory is None else m(x, memory, static_kv=True)
    cache: dict = {}
    steps = run_steps(m, x, cache, memory)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
    assert cache["mae_sum"].shape == (3, D)
    assert torch.equal(cache["mae_count"], torch.full((3, 1), 6.0, dtype=DTYPE))


def test_incremental_decoding_survives_beam_reordering():
    m = make(8, 2)
    x, order = inputs(), torch.tensor([2, 0, 0])
    cache: dict = {}
    run_steps(m, x, cache, chunks=(1, 1))
    reorder_cache(cache, order)
    rest = run_steps(m, x[order, 2:], cache, chunks=(1, 2, 1))
    torch.testing.assert_close(rest, m(x[order], causal=True)[:, 2:], rtol=0, atol=1e-12)


def test_incremental_with_non_causal_gate_is_refused():
    m = make(4, 1, causal_gate=False)
    with pytest.raises(ValueError, match="needs a causal gate"):
        m(inputs(), causal=True, cache={})


@pytest.mark.parametrize("causal", [False, True])
def test_argmax_expert_mode_uses_the_most_likely_expert(causal):
    m = make(8, 2, mode="argmax_expert")
    x = inputs()
    out = m(x, causal=causal)
    experts = m.last_gate.argmax(-1)
    assert torch.equal(m.last_expert, experts) and experts.shape == ((3, 6) if causal else (3,))
    torch.testing.assert_close(out, one_expert(m, head_terms(m, x, causal=causal), experts), rtol=0, atol=1e-12)


def test_random_expert_mode_uses_one_expert_per_sequence_and_keeps_it_while_decoding():
    m = make(4, 1, mode="random_expert")
    x = inputs()
    torch.manual_seed(3)
    out = m(x)
    assert m.last_expert.shape == (3,)
    torch.testing.assert_close(out, one_expert(m, head_terms(m, x), m.last_expert), rtol=0, atol=1e-12)
    cache: dict = {}
    steps = run_steps(m, x, cache)
    chosen = cache["mae_expert"]
    assert torch.equal(m.last_expert, chosen)
    expected = one_expert(m, head_terms(m, x, causal=True), chosen)
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-12)


def test_uni_mae_has_no_gate_trains_one_expert_per_batch_and_evaluates_as_plain_mha():
    torch.manual_seed(0)
    mha = MultiheadAttention(D, 8).to(DTYPE).eval()
    uni = MAEAttention(D, 8, cfg=MAEConfig(drop=2, uniform=True)).to(DTYPE)
    uni.load_state_dict(mha.state_dict())  # strict: no gate parameters at all
    assert not [n for n, _ in uni.named_parameters() if re.search(GATE_PARAM_PATTERN, n)]
    assert sum(p.numel() for p in uni.parameters()) == sum(p.numel() for p in mha.parameters())
    x = inputs()
    uni.train()
    out = uni(x)
    assert uni.last_expert.dim() == 0 and uni.last_gate is None
    batch_expert = uni.last_expert.expand(3)
    torch.testing.assert_close(out, one_expert(uni, head_terms(uni, x), batch_expert), rtol=0, atol=1e-12)
    uni.eval()
    assert torch.equal(uni(x, causal=True), mha(x, causal=True))


def test_uni_mae_random_expert_mode_at_inference():
    uni = make(4, 1, uniform=True, mode="random_expert")
    x = inputs()
    out = uni(x)
    torch.testing.assert_close(out, one_expert(uni, head_terms(uni, x), uni.last_expert), rtol=0, atol=1e-12)


def test_sample_expert_from_gate_only_while_the_gate_is_frozen():
    m = make(4, 1, sample_expert_from_gate=True).train()
    x = inputs()
    m(x)
    assert m.last_expert is None  # gate trainable (G-step or joint): the mixture
    m.mae_gate.requires_grad_(False)
    out = m(x, causal=True)
    assert m.last_expert.shape == (3, 6)
    expected = one_expert(m, head_terms(m, x, causal=True), m.last_expert)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_gate_param_pattern_selects_exactly_the_gate_parameters():
    model = nn.ModuleDict({"layers": nn.ModuleList([make(4, 1), MultiheadAttention(D, 4)]), "top": make(4, 2)})
    selected = sorted(n for n, _ in model.named_parameters() if re.search(GATE_PARAM_PATTERN, n))
    gates = [f"{p}.mae_gate.{w}" for p in ("layers.0", "top") for w in GATE_WEIGHTS]
    assert selected == sorted(gates)


def test_gate_statistics():
    uniform = torch.full((2, 5, 4), 0.25)
    onehot = nn.functional.one_hot(torch.tensor([[0, 1, 1, 3, 3], [2, 2, 2, 2, 2]]), 4).float()
    pad = torch.tensor([[False] * 5, [False, True, True, True, True]])
    assert gate_entropy(uniform).item() == pytest.approx(math.log(4))
    assert gate_entropy(onehot).item() == 0.0
    torch.testing.assert_close(expert_usage(onehot), torch.tensor([0.1, 0.2, 0.5, 0.2]))
    torch.testing.assert_close(expert_usage(onehot, pad), torch.tensor([1 / 6, 2 / 6, 1 / 6, 2 / 6]))
    mixed = torch.cat([uniform[:, :1], onehot[:, 1:]], 1)  # entropy log 4 at position 0 only
    assert gate_entropy(mixed, pad).item() == pytest.approx(2 * math.log(4) / 6)


@pytest.mark.parametrize(
    "cfg,message",
    [
        (MAEConfig(drop=8), "mae.drop=8 must be between 1 and n_heads-1=7"),
        (MAEConfig(drop=0), "mae.drop=0 must be between 1 and n_heads-1=7"),
        (
            MAEConfig(mode="argmax"),
            "mae.mode='argmax' is not one of mixture, random_expert, argmax_expert (did you mean: argmax_expert?)",
        ),
        (MAEConfig(gate_hidden=0), "mae.gate_hidden=0 must be positive (or null for d_model)"),
        (
            MAEConfig(uniform=True, mode="argmax_expert"),
            "mae.mode='argmax_expert' needs a gate but mae.uniform=true has none",
        ),
        (
            MAEConfig(uniform=True, sample_expert_from_gate=True),
            "mae.sample_expert_from_gate=true needs a gate but mae.uniform=true has none",
        ),
    ],
)
def test_config_errors(cfg, message):
    with pytest.raises(ConfigError) as err:
        MAEAttention(D, 8, cfg=cfg)
    assert str(err.value) == message


def test_gate_hidden_size_and_expert_count():
    m = MAEAttention(D, 8, cfg=MAEConfig(drop=2, gate_hidden=16))
    assert m.mae_gate.fc1.weight.shape == (16, D) and m.mae_gate.fc2.weight.shape == (28, 16)
    assert MAEAttention(D, 8).mae_gate.fc1.weight.shape == (D, D)  # default: d_model


def test_set_mae_mode_switches_every_module_and_validates():
    model = nn.ModuleList([make(4, 1), MultiheadAttention(D, 4), make(4, 2)])
    assert set_mae_mode(model, "argmax_expert") == 2
    x = inputs()
    out = model[2](x)
    assert model[0].mode == "argmax_expert" and model[2].last_expert.shape == (3,)
    expected = one_expert(model[2], head_terms(model[2], x), model[2].last_expert)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="needs a gate but mae.uniform=true has none"):
        set_mae_mode(nn.ModuleList([make(4, 1, uniform=True)]), "argmax_expert")
