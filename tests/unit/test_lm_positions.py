"""transformer_lm's positions (with the token embeddings, or learned tables at the first or every layer's
input) and output bias, and char_transformer as the transformer_lm configuration that uses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig, transformer_lm_config
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig

V, D, LAYERS, MAX = 11, 16, 3, 24


def lm(**overrides) -> TransformerLM:
    base = dict(n_layers=LAYERS, d_model=D, n_heads=2, d_ff=32, max_positions=MAX, dropout=0.3)
    torch.manual_seed(0)
    return TransformerLM(TransformerLMConfig(**{**base, **overrides}), V)


def tokens(length: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (2, length), generator=torch.Generator().manual_seed(1))


def by_hand(model: TransformerLM, x: torch.Tensor, at: str) -> torch.Tensor:
    """Logits with the positions and the embedding dropout where `at` says, written out."""
    t = x.size(1)
    embedded = model.embed(x) * model.embed_scale
    p = model.cfg.dropout if model.training else 0.0
    if at == "input":
        h = F.dropout(embedded + model.positions.weight[:t], p, model.training)
    else:
        h = F.dropout(embedded, p, model.training)
    for i, layer in enumerate(model.layers):
        if at == "every_layer" or (at == "first_layer" and i == 0):
            h = h + model.positions[i, :t]
        h = layer(h, causal=True)
    return model.output(model.final_norm(h))


@pytest.mark.parametrize("at", ["input", "first_layer", "every_layer"])
@pytest.mark.parametrize("training", [False, True])
def test_positions_join_where_positions_at_says(at: str, training: bool) -> None:
    """Training: the embedding dropout comes before the layers' tables (T64), after the input positions."""
    model = lm(positions_at=at).train(training)
    n_tables = {"input": None, "first_layer": 1, "every_layer": LAYERS}[at]
    if n_tables is not None:
        assert isinstance(model.positions, torch.nn.Parameter) and model.positions.shape == (n_tables, MAX, D)
    assert model.parameter_breakdown()["position_parameters"] == (n_tables or 1) * MAX * D
    torch.manual_seed(3)
    logits = model(tokens())[0]
    torch.manual_seed(3)
    assert torch.equal(logits, by_hand(model, tokens(), at))


def test_a_table_at_the_first_layer_equals_input_positions_in_evaluation() -> None:
    at_input, at_first = lm().eval(), lm(positions_at="first_layer").eval()
    state = at_input.state_dict()
    state["positions"] = state.pop("positions.weight")[None]
    at_first.load_state_dict(state)
    assert torch.equal(at_first(tokens())[0], at_input(tokens())[0])


@pytest.mark.parametrize("tie", [False, True])
def test_output_bias(tie: bool) -> None:
    plain, biased = lm(tie_embeddings=tie), lm(tie_embeddings=tie, output_bias=True)
    assert plain.output.bias is None and biased.output.bias.shape == (V,)
    assert (biased.output.weight is biased.embed.weight) == tie
    count = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in biased.parameters()) == count + V


def test_config_errors() -> None:
    with pytest.raises(ConfigError) as error:
        lm(positions_at="every_layer", positions="sinusoidal")
    assert str(error.value) == (
        "model.positions_at=every_layer adds learned tables: set model.positions=learned (got sinusoidal) "
        "or model.positions_at=input"
    )
    with pytest.raises(ConfigError) as error:
        lm()(tokens(MAX + 1))
    assert str(error.value) == f"input of {MAX + 1} tokens is longer than model.max_positions={MAX}"


@pytest.mark.parametrize(
    "overrides", [{}, {"positions": "first_layer", "intermediate_heads": "shared", "tie_embeddings": True}]
)
def test_char_transformer_is_transformer_lm_in_its_configuration(overrides: dict) -> None:
    char_cfg = CharTransformerConfig(n_layers=LAYERS, d_model=D, n_heads=2, d_ff=32, max_positions=MAX, **overrides)
    cfg = transformer_lm_config(char_cfg)
    assert (cfg.positions_at, cfg.output_bias, cfg.pre_ln, cfg.final_norm) == (
        char_cfg.positions,
        True,
        True,
        True,
    )
    assert (cfg.aux_heads.intermediate_heads, cfg.aux_heads.n_targets) == (char_cfg.intermediate_heads, 2)
    torch.manual_seed(0)
    char = CharTransformer(char_cfg, V).train()
    torch.manual_seed(0)
    plain = TransformerLM(cfg, V).train()
    assert isinstance(char, TransformerLM) and char.cfg == cfg
    assert list(char.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(char.state_dict().values(), plain.state_dict().values()))
    target = tokens().roll(-1, 1)
    torch.manual_seed(3)
    logits, aux = char(tokens(), target=target)
    torch.manual_seed(3)
    expected, expected_aux = plain(tokens(), target=target)
    assert torch.equal(logits, expected) and aux.keys() == expected_aux.keys()
    assert all(torch.equal(aux[k], expected_aux[k]) for k in aux)


def test_char_transformer_with_rotary_positions_is_the_rotary_lm_without_position_tables() -> None:
    shape = dict(n_layers=LAYERS, d_model=D, n_heads=2, d_ff=32, max_positions=MAX)
    cfg = transformer_lm_config(CharTransformerConfig(**shape, positions="rotary"))
    assert (cfg.positions, cfg.positions_at) == ("rotary", "input")
    torch.manual_seed(0)
    char = CharTransformer(CharTransformerConfig(**shape, positions="rotary"), V).eval()
    torch.manual_seed(0)
    plain = TransformerLM(cfg, V).eval()
    tables = CharTransformer(CharTransformerConfig(**shape), V)
    assert char.position_tables() == [] and all(layer.self_attn.rotary is not None for layer in char.layers)
    assert list(char.state_dict()) == [k for k in tables.state_dict() if not k.startswith("positions")]
    char.load_state_dict(plain.state_dict())
    assert torch.equal(char(tokens())[0], plain(tokens())[0])
