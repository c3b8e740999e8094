"""transformer_lm with relative positions (`positions: relative`): one shared position-key table, a carried
stream cache, MAE over the relative attention; streaming_lm checkpoints with the old layer names load."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import read_in_blocks
from toolkit.models.saved_names import with_current_names
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig
from toolkit.modules.attention.mae import RelativeMAEAttention
from toolkit.modules.attention.span_attention import CausalRelativeAttention

V = 17
SIZES = dict(n_layers=2, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=8)


def relative_lm(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    span = {"max_span": 40, "span_ramp": 4, "span_init": 0.3}
    relative = {"positions": "relative", "attention": "adaptive_span", "adaptive_span": span}
    cfg = TransformerLMConfig(**{**SIZES, **relative, **overrides})
    return TransformerLM.create(cfg, V).eval()


def test_one_key_table_serves_every_layer_and_blocks_read_with_the_cache_equal_one_pass() -> None:
    model = relative_lm()  # pre-LN with a final norm: any layout takes relative positions
    assert model.carries_stream_cache and model.positions is None and model.key_pe.shape == (8, 40)
    assert all(type(layer.self_attn) is CausalRelativeAttention for layer in model.layers)
    assert not any(layer.self_attn.key_pe is not None for layer in model.layers)
    tokens = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))  # longer than max_positions
    whole, aux, cache = model(tokens)
    assert set(aux) == {"span_l1"} and [c.size(1) for c in cache] == [model.cache_length(64)] * 2 == [39, 39]
    torch.testing.assert_close(read_in_blocks(model, tokens, 8), whole, rtol=1e-5, atol=1e-5)


def test_the_trainer_contract_carries_the_streams_cache() -> None:
    model = relative_lm()
    blocks = torch.randint(0, V, (3, 2, 8), generator=torch.Generator().manual_seed(2))
    expected = read_in_blocks(model, blocks.permute(1, 0, 2).reshape(2, 24), 8)[:, 16:]
    for i in range(3):
        output, aux = model(blocks[i], target=blocks[i], reset=i == 0)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    state = model.stream_state()
    assert [tuple(c.shape) for c in state] == [(2, 24, 16)] * 2 and state[0].device.type == "cpu"


def test_mae_reweights_the_relative_attention_of_the_adaptive_span_block() -> None:
    model = relative_lm(attention={"name": "mae", "gate_hidden": 8})
    assert all(type(layer.self_attn) is RelativeMAEAttention for layer in model.layers)
    assert model.layers[0].self_attn.max_span == 40 and model.layers[0].self_attn.span.ramp == 4
    assert model.aux_term_names() == ["span_l1"] and model.parameter_breakdown()["gate_parameters"] > 0


def test_absolute_positions_carry_no_cache() -> None:
    torch.manual_seed(0)
    model = TransformerLM.create(TransformerLMConfig(**SIZES), V)
    assert not model.carries_stream_cache and model.stream_state() is None
    with pytest.raises(ValueError, match=r"^a carried cache needs relative positions \(model.positions=relative\)$"):
        model(torch.zeros(1, 4, dtype=torch.long), reset=True)


def test_a_streaming_lm_checkpoint_with_the_streamed_layer_names_loads() -> None:
    """Before the fold a streamed layer named its attention `attn` and its norm `attn_norm`."""
    cfg = StreamingLMConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, d_ff=24, attn_span=32, block_size=8)
    torch.manual_seed(0)
    saved = StreamingLM(cfg)
    old = {
        k.replace(".self_attn.", ".attn.").replace(".self_attn_norm.", ".attn_norm."): v
        for k, v in saved.state_dict().items()
    }
    assert "layers.1.attn.span.span_param" in old and "layers.0.attn_norm.weight" in old
    torch.manual_seed(1)
    loaded = StreamingLM(cfg)
    assert with_current_names(loaded, old).keys() == loaded.state_dict().keys()  # what resume checks compare
    loaded.load_state_dict(old, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
