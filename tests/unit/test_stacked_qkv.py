"""Stacked q/k/v projections: the same numbers as three separate ones, and separate-form weights load."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.modules.attention.base import SEPARATE_PROJECTIONS, MultiheadAttention, with_stacked_projections
from toolkit.modules.attention.mae import MAEAttention, MAEConfig
from toolkit.modules.stacked_linear import StackedLinear
from toolkit.train.stacked_optimizer_state import stack_separate_projection_states

D, H = 16, 4


def separate_form(state: dict) -> dict:
    """A state dict as the modules wrote it with q_proj/k_proj/v_proj: each projection's weight then bias."""
    out = {}
    for key, value in state.items():
        prefix, stacked, kind = key.rpartition("qkv_proj.")
        if not stacked:
            out[key] = value
        elif kind == "weight":
            bias = state.get(f"{prefix}qkv_proj.bias")
            for i, name in enumerate(SEPARATE_PROJECTIONS):
                out[f"{prefix}{name}.weight"] = value.chunk(3)[i]
                if bias is not None:
                    out[f"{prefix}{name}.bias"] = bias.chunk(3)[i]
    return out


def test_initialisation_draws_what_three_linear_layers_draw():
    torch.manual_seed(3)
    layers = [nn.Linear(D, D) for _ in range(3)]
    after = torch.rand(2)
    torch.manual_seed(3)
    stacked = StackedLinear(D, D, 3)
    assert torch.equal(stacked.weight, torch.cat([layer.weight for layer in layers]))
    assert torch.equal(stacked.bias, torch.cat([layer.bias for layer in layers]))
    assert torch.equal(torch.rand(2), after)


def test_self_and_cross_attention_equal_separate_projections_bit_for_bit():
    torch.manual_seed(0)
    m = MultiheadAttention(D, H).eval()
    x, src = torch.randn(3, 5, D), torch.randn(3, 7, D)
    (wq, wk, wv), (bq, bk, bv) = m.qkv_proj.weight.chunk(3), m.qkv_proj.bias.chunk(3)

    def reference(query, key, causal):
        heads = [
            F.linear(t, w.clone(), b.clone()).view(3, -1, H, D // H).transpose(1, 2)
            for t, w, b in ((query, wq, bq), (key, wk, bk), (key, wv, bv))
        ]
        out = F.scaled_dot_product_attention(*heads, is_causal=causal)
        return m.out_proj(out.transpose(1, 2).reshape(3, -1, D))

    assert torch.equal(m(x, causal=True), reference(x, x, True))
    assert torch.equal(m(x, src), reference(x, src, False))


def test_separate_form_weights_load_and_compute_the_same():
    torch.manual_seed(1)
    model = nn.ModuleDict({"self": MAEAttention(D, H, cfg=MAEConfig(gate_hidden=8)), "cross": MultiheadAttention(D, H)})
    old = separate_form(model.state_dict())
    assert "self.q_proj.weight" in old and not any("qkv" in k for k in old)
    fresh = nn.ModuleDict({"self": MAEAttention(D, H, cfg=MAEConfig(gate_hidden=8)), "cross": MultiheadAttention(D, H)})
    fresh.load_state_dict(old)  # strict: every separate key is used
    assert with_stacked_projections(fresh, old).keys() == model.state_dict().keys()
    x, src = torch.randn(2, 6, D), torch.randn(2, 4, D)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model["self"](x, causal=True), fresh["self"](x, causal=True))
        assert torch.equal(model["cross"](x, src), fresh["cross"](x, src))


def test_per_tensor_optimizer_groups_are_stacked_in_block_order():
    # an optimizer with one torch param group per tensor (the per-tensor clipped Adagrad): state index i is
    # the i-th parameter in model order; the stacked weight and bias each take one group
    torch.manual_seed(2)
    model = MultiheadAttention(D, H)
    old_model = separate_form(model.state_dict())
    old_names = list(old_model)
    saved = {
        "state": {
            i: {"step": torch.tensor(3.0), "sum": torch.full_like(old_model[n], float(i))}
            for i, n in enumerate(old_names)
        },
        "param_groups": [{"lr": i / 10, "params": [i]} for i in range(len(old_names))],
    }
    names = [n for n, _ in model.named_parameters()]
    out = stack_separate_projection_states(model, old_model, {"main": names}, {"main": saved})["main"]
    assert [g["params"] for g in out["param_groups"]] == [[0], [1], [2], [3]]
    assert [g["lr"] for g in out["param_groups"]] == [0.0, 0.1, 0.6, 0.7]  # the q block's group, then out_proj's
    assert old_names[:6] == [
        "q_proj.weight",
        "q_proj.bias",
        "k_proj.weight",
        "k_proj.bias",
        "v_proj.weight",
        "v_proj.bias",
    ]
    assert torch.equal(out["state"][0]["sum"], torch.cat([torch.full((D, D), float(i)) for i in (0, 2, 4)]))
    assert torch.equal(out["state"][1]["sum"], torch.cat([torch.full((D,), float(i)) for i in (1, 3, 5)]))
    assert torch.equal(out["state"][2]["sum"], torch.full((D, D), 6.0)) and out["state"][2]["step"] == 3
