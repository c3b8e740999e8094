"""MAE in the decoder-only LM: causal gate, and a uniform gate equals the plain model."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig

SIZES = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "dropout": 0.0}


def model(**extra) -> TransformerLM:
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(TransformerLMConfig), {**SIZES, **extra})
    return TransformerLM(cfg, 27).eval().double()


def test_later_tokens_do_not_change_earlier_outputs():
    lm = model(attention="mae", mae={"drop": 1, "gate_hidden": 8})
    tokens = torch.randint(0, 27, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % 27
    a, b = lm(tokens)[0], lm(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_uniform_gate_equals_plain_attention():
    plain, mae = model(), model(attention="mae", mae={"drop": 2, "gate_hidden": 8})
    missing, unexpected = mae.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all("mae_gate" in k for k in missing)
    with torch.no_grad():  # zero each gate's last layer: a uniform mixture of the experts
        for module in mae.modules():
            if module.__class__.__name__ == "MAEGate":
                last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
                last.weight.zero_()
                last.bias.zero_()
    tokens = torch.randint(0, 27, (2, 10))
    torch.testing.assert_close(mae(tokens)[0], plain(tokens)[0], rtol=0, atol=1e-10)
