"""model.init: the fairseq scheme is exactly the constructors' historical init, the gpt2 scheme has the
documented statistics in every model, a fresh gpt2 LM predicts near-uniformly, and the scheme never changes
what a model computes from given weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit.init_model_zoo import build, digests, zoo
from toolkit.errors import ConfigError
from toolkit.models.init_schemes import GPT2_STD, residual_projections
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "init_fairseq_digests.json"


def test_fairseq_scheme_reproduces_the_historical_parameters_exactly():
    # digests recorded from the constructors before init became a choice, same seed, every model kind
    assert digests("fairseq") == json.loads(FIXTURE.read_text())


def test_gpt2_scheme_changes_parameters():
    reference = json.loads(FIXTURE.read_text())
    changed = digests("gpt2")
    for name in reference:
        assert changed[name] != reference[name], name


def close(t: torch.Tensor, std: float, rel: float = 0.1) -> bool:
    return abs(t.float().std().item() - std) < rel * std and abs(t.float().mean().item()) < 0.2 * std


def input_tables(model: nn.Module) -> list[tuple[torch.Tensor, float]]:
    """(token table, the scale the model multiplies it by) of each model kind in the zoo."""
    if hasattr(model, "encoder_embed"):
        return [(model.encoder_embed.weight, model.embed_scale), (model.decoder_embed.weight, model.embed_scale)]
    return [(model.embed.weight, getattr(model, "embed_scale", 1.0))]


@pytest.mark.parametrize("name", list(zoo()))
def test_gpt2_statistics(name):
    model = build(name, "gpt2")
    residual = residual_projections(model)
    assert len(residual) >= 2
    residual_std = GPT2_STD / math.sqrt(len(residual))
    for linear in residual:
        assert close(linear.weight, residual_std), name
    if "adaptive" not in name:  # adaptive input keeps its own band init
        for table, scale in input_tables(model):
            rows = table[2:] if name.startswith("transformer") and not name.startswith("transformer_lm") else table
            assert close(rows * scale, GPT2_STD), name  # what the first layer sees: N(0, 0.02)
    if name.startswith("transformer_lm") and "sinusoidal" not in name:
        assert close(model.positions.weight, GPT2_STD)
    if name == "char_transformer":
        assert close(model.positions, GPT2_STD)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), module_name
    # query projections: the stacked q/k/v of MultiheadAttention, RelativeAttention's separate q_proj
    q_proj = [
        getattr(m, "qkv_proj", None) or m.q_proj
        for m in model.modules()
        if hasattr(m, "qkv_proj") or hasattr(m, "q_proj")
    ]
    assert q_proj and all(close(q.weight, GPT2_STD) for q in q_proj)
    assert all(q.bias is None or torch.all(q.bias == 0) for q in q_proj)


def test_gpt2_keeps_padding_rows_and_tying():
    model = build("transformer", "gpt2")
    assert torch.all(model.encoder_embed.weight[1] == 0)  # pad_idx=1
    assert model.decoder_embed is model.encoder_embed
    lm = build("transformer_lm", "gpt2")
    assert lm.output.weight is lm.embed.weight


def test_gpt2_leaves_method_specific_parameters_alone():
    fairseq, gpt2 = build("streaming_lm_persistent", "fairseq"), build("streaming_lm_persistent", "gpt2")
    for key in (
        "key_pe",
        "layers.0.attn.persistent.keys",
        "layers.0.attn.persistent.values",
        "layers.1.attn.span.span_param",
    ):
        state_f, state_g = fairseq.state_dict(), gpt2.state_dict()
        if key in state_f:
            assert torch.equal(state_f[key], state_g[key]), key
    assert torch.equal(fairseq.key_pe, gpt2.key_pe)


@pytest.mark.parametrize(
    "name", ["transformer_lm", "transformer_lm_untied_sinusoidal", "char_transformer", "streaming_lm"]
)
def test_first_loss_of_a_fresh_gpt2_lm_is_close_to_uniform(name):
    vocab = 27
    model = build(name, "gpt2").eval()
    tokens = torch.randint(vocab, (4, 16), generator=torch.Generator().manual_seed(0))
    out = model(tokens)
    logits = out[0]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(vocab)) < 0.05, loss


def test_fairseq_tied_lm_starts_far_from_uniform():
    # the scaled, tied table predicts the input symbol itself: the slow start gpt2 removes
    torch.manual_seed(0)
    model = TransformerLM.create(TransformerLMConfig(init="fairseq"), 27).eval()
    tokens = torch.randint(27, (4, 64), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(tokens)[0][:, :-1].reshape(-1, 27), tokens[:, 1:].reshape(-1)).item()
    assert loss > 3 * math.log(27)


@pytest.mark.parametrize("name", list(zoo()))
def test_the_scheme_never_changes_outputs_for_given_weights(name):
    fairseq, gpt2 = build(name, "fairseq").eval(), build(name, "gpt2", seed=1).eval()
    gpt2.load_state_dict(fairseq.state_dict())
    tokens = torch.randint(3, 27, (2, 8), generator=torch.Generator().manual_seed(0))
    if name.startswith("transformer") and not name.startswith("transformer_lm"):
        args = (tokens, tokens)
    else:
        args = (tokens,)
    assert torch.equal(fairseq(*args)[0], gpt2(*args)[0])


def test_unknown_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model.init: unknown scheme 'xavier' \(valid: gpt2, fairseq\)$"):
        TransformerLM.create(TransformerLMConfig(init="xavier"), 27)


def test_quickstart_lm_has_tokens_and_positions_of_the_same_size():
    torch.manual_seed(0)
    cfg = TransformerLMConfig(d_model=256, n_layers=2, d_ff=1024, init="gpt2", scale_embedding=False)
    model = TransformerLM.create(cfg, 27)
    assert model.embed_scale == 1.0
    assert close(model.embed.weight, GPT2_STD, rel=0.15) and close(model.positions.weight, GPT2_STD)
    tokens = torch.randint(27, (2, 32), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model.eval()(tokens)[0][:, :-1].reshape(-1, 27), tokens[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(27)) < 0.15  # logits of std ~0.02 * sqrt(d): near uniform, not ~14 nats
