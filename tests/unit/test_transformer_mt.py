"""Encoder-decoder Transformer: shapes, preset sizes, incremental decoding == full recomputation, padding."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.models.transformer import TransformerConfig, TransformerModel
from toolkit.registry import MODELS

BOS, PAD, EOS, V = 0, 1, 2, 37
TASK = SimpleNamespace(vocab_size=V, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS)


def tiny_cfg(**overrides) -> TransformerConfig:
    base = dict(encoder_layers=2, decoder_layers=2, d_model=16, ffn_dim=32, n_heads=4, dropout=0.0)
    return TransformerConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, **overrides) -> TransformerModel:
    torch.manual_seed(seed)
    model = MODELS.get("transformer").builder.build(tiny_cfg(**overrides), TASK)
    return model.double().eval()


def random_tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (b, t), generator=g)


def expected_params(cfg: TransformerConfig, vocab: int) -> int:
    """Independent count: shared embedding, attention (4 projections with bias), FFN, LayerNorms."""
    d, f = cfg.d_model, cfg.ffn_dim
    attn, ffn, ln = 4 * (d * d + d), 2 * d * f + f + d, 2 * d
    enc = cfg.encoder_layers * (attn + ffn + 2 * ln)
    dec = cfg.decoder_layers * (2 * attn + ffn + 3 * ln)
    final = 2 * ln if cfg.pre_ln else 0
    learned = 2 * cfg.max_positions * d if cfg.positions == "learned" else 0
    return vocab * d + enc + dec + final + learned


@pytest.mark.parametrize(
    "sizes, params",
    [
        (dict(d_model=512, ffn_dim=2048, n_heads=8), 60_522_496),  # transformer_base
        (dict(d_model=1024, ffn_dim=4096, n_heads=16, dropout=0.3), 209_125_376),  # transformer_big
        (dict(d_model=512, ffn_dim=1024, n_heads=4), 47_927_296),  # transformer_iwslt_de_en
    ],
)
def test_preset_sizes_build_with_expected_parameter_counts(sizes, params):
    cfg = TransformerConfig(**sizes)
    with torch.device("meta"):  # no memory, no init cost
        model = TransformerModel.build(cfg, SimpleNamespace(vocab_size=32000, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS))
    assert sum(p.numel() for p in model.parameters()) == expected_params(cfg, 32000) == params


def test_forward_shapes_aux_and_tied_embeddings():
    model = tiny_model(pre_ln=True, positions="learned")
    logits, aux = model(random_tokens(3, 7), random_tokens(3, 5))
    assert logits.shape == (3, 5, V) and aux == {}
    assert model.decoder_embed is model.encoder_embed
    assert sum(p.numel() for p in model.parameters()) == expected_params(model.cfg, V)
    untied = tiny_model(share_all_embeddings=False, share_decoder_input_output_embed=False)
    assert untied.decoder_embed is not untied.encoder_embed and untied.output_projection is not None
    assert untied(random_tokens(2, 4), random_tokens(2, 3))[0].shape == (2, 3, V)


def test_logits_match_a_hand_computed_post_ln_forward():
    """One encoder and one decoder layer recomputed from the parameters with plain tensor ops."""
    model = tiny_model(encoder_layers=1, decoder_layers=1)
    src, prev = random_tokens(2, 6), random_tokens(2, 4, seed=2)
    d, h = model.cfg.d_model, model.cfg.n_heads

    def pos_table(n):
        half = d // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(torch.log(torch.tensor(1e4)) / (half - 1)))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * freqs
        return torch.cat([ang.sin(), ang.cos()], 1)

    def mha(m, q, kv, causal):
        def heads(x, block):  # block 0, 1, 2 of the stacked q/k/v projection
            w, b = m.qkv_proj.weight.chunk(3)[block], m.qkv_proj.bias.chunk(3)[block]
            return F.linear(x, w, b).view(x.size(0), x.size(1), h, d // h).transpose(1, 2)

        a = heads(q, 0) @ heads(kv, 1).transpose(-1, -2) / (d // h) ** 0.5
        if causal:
            a = a.masked_fill(torch.ones(q.size(1), kv.size(1)).triu(1).bool(), float("-inf"))
        out = a.softmax(-1) @ heads(kv, 2)
        return m.out_proj(out.transpose(1, 2).reshape(q.size(0), q.size(1), d))

    def ffn(layer, x):
        return layer.ffn.fc2(torch.relu(layer.ffn.fc1(x)))

    emb = model.encoder_embed.weight
    x = emb[src] * d**0.5 + pos_table(6)
    enc = model.encoder_layers[0]
    x = enc.self_attn_norm(x + mha(enc.self_attn, x, x, False))
    x = enc.ffn_norm(x + ffn(enc, x))
    y = emb[prev] * d**0.5 + pos_table(4)
    dec = model.decoder_layers[0]
    y = dec.self_attn_norm(y + mha(dec.self_attn, y, y, True))
    y = dec.cross_attn_norm(y + mha(dec.cross_attn, y, x, False))
    y = dec.ffn_norm(y + ffn(dec, y))
    torch.testing.assert_close(model(src, prev)[0], y @ emb.T)


@pytest.mark.parametrize("pre_ln, positions", [(False, "sinusoidal"), (True, "learned")])
def test_incremental_decoding_equals_full_recomputation(pre_ln, positions):
    model = tiny_model(pre_ln=pre_ln, positions=positions)
    src = random_tokens(3, 6)
    src[1, 4:] = PAD  # a padded source row
    prev = torch.cat([torch.full((3, 1), BOS), random_tokens(3, 7, seed=3)], 1)
    enc = model.encode(src)
    full = model.decode(prev, enc)
    state = model.init_decoder_state(enc)
    steps = [model.decode(prev[:, i : i + 1], None, state) for i in range(prev.size(1))]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-10)
    assert state.length == prev.size(1)


def test_reordered_state_continues_like_a_reordered_batch():
    model = tiny_model()
    src, prev = random_tokens(3, 5), torch.cat([torch.full((3, 1), BOS), random_tokens(3, 4, seed=4)], 1)
    state = model.init_decoder_state(model.encode(src))
    model.decode(prev[:, :3], None, state)  # several tokens at once also continue the cache
    order = torch.tensor([2, 0, 0])
    model.reorder_decoder_state(state, order)
    step = model.decode(prev[order, 3:4], None, state)
    expected = model.decode(prev[order, :4], model.encode(src[order]))[:, -1:]
    torch.testing.assert_close(step, expected, rtol=0, atol=1e-10)


def test_source_padding_on_either_side_does_not_change_outputs():
    model = tiny_model(positions="learned")
    src, prev = random_tokens(1, 4), random_tokens(1, 3, seed=5)
    alone = model(src, prev)[0]
    pad = torch.full((1, 3), PAD)
    for padded in (torch.cat([src, pad], 1), torch.cat([pad, src], 1)):
        batch = torch.cat([padded, random_tokens(1, 7, seed=6)])
        out = model(batch, torch.cat([prev, random_tokens(1, 3, seed=7)]))[0][:1]
        torch.testing.assert_close(out, alone, rtol=0, atol=1e-10)


def test_config_errors_are_one_line():
    with pytest.raises(
        ConfigError,
        match=r"^model.attention: unknown attention 'standrd' \(did you mean: "
        r"standard\?\); valid: adaptive_span, mae, standard$",
    ):
        tiny_model(attention="standrd")
    with pytest.raises(ConfigError, match="needs a joint vocabulary, but the source has 10 and the target 12"):
        TransformerModel.build(
            tiny_cfg(),
            SimpleNamespace(vocab_size=0, src_vocab_size=10, tgt_vocab_size=12, pad_idx=PAD, eos_idx=EOS, bos_idx=BOS),
        )
    with pytest.raises(ValueError, match="target length 9 exceeds model.max_positions=8"):
        tiny_model(max_positions=8)(random_tokens(1, 3), random_tokens(1, 9))


def test_config_is_a_plain_documented_dataclass():
    names = [f.name for f in dataclasses.fields(TransformerConfig)]
    for key in (
        "encoder_layers",
        "decoder_layers",
        "d_model",
        "ffn_dim",
        "n_heads",
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "pre_ln",
        "positions",
        "max_positions",
        "share_all_embeddings",
        "scale_embedding",
        "activation",
        "attention",
    ):
        assert key in names
    assert TransformerConfig().max_positions == 1024 and TransformerConfig().attention == "standard"
