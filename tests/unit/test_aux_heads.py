"""Auxiliary heads (toolkit.modules.aux_heads) in the decoder LMs: their terms against independent computations,
only active terms computed, switched-off heads without gradient, the config errors, and char_transformer's
checkpoints from before the heads were one module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig
from toolkit.models.streaming_lm import StreamingLM, StreamingLMConfig
from toolkit.models.transformer_lm import TransformerLM, TransformerLMConfig
from toolkit.modules.aux_heads import AuxHeadsConfig, with_nested_aux_heads

V, D = 13, 16


def tokens_and_target(length: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.randint(0, V, (2, length + 1), generator=torch.Generator().manual_seed(seed))
    return c[:, :-1], c[:, 1:]


def lm(heads: str = "separate", n_targets: int = 3, **overrides) -> TransformerLM:
    torch.manual_seed(0)
    cfg = dict(n_layers=3, d_model=D, n_heads=2, d_ff=32, dropout=0.0, max_positions=32)
    cfg.update(overrides)
    aux = AuxHeadsConfig(intermediate_heads=heads, n_targets=n_targets)
    return TransformerLM.create(TransformerLMConfig(**cfg, aux_heads=aux), V).eval()


def streaming(heads: str = "separate", n_targets: int = 3, **overrides) -> StreamingLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, d_model=D, n_layers=3, n_heads=2, d_ff=32, block_size=10, attn_span=32, dropout=0.0)
    cfg.update(overrides)
    aux = AuxHeadsConfig(intermediate_heads=heads, n_targets=n_targets)
    return StreamingLM.create(StreamingLMConfig(**cfg, aux_heads=aux)).eval()


def layer_outputs(model: torch.nn.Module, run) -> list[torch.Tensor]:
    """The output of every layer during `run()`, captured by forward hooks (the streamed layers return a tuple)."""
    seen: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        for layer in model.layers
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def expected_terms(model, states: list[torch.Tensor], hidden: torch.Tensor, target: torch.Tensor, shared) -> dict:
    """Each term from scratch: a head's cross-entropy over the positions that have a label."""
    heads = model.aux_heads
    out = {}
    for l in (1, 2):
        if heads.intermediate_heads == "separate":
            norm, proj = heads.layer_heads[l - 1]
            logits = F.linear(F.layer_norm(states[l - 1], (D,), norm.weight, norm.bias), proj.weight, proj.bias)
        else:
            logits = shared(states[l - 1])
        out[f"layer_{l}_nll"] = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1))
    t = target.size(1)
    for k in range(2, heads.n_targets + 1):
        proj = heads.target_heads[k - 2]
        logits = F.linear(hidden, proj.weight, proj.bias)[:, : t - k + 1]
        out[f"target_{k}_nll"] = F.cross_entropy(logits.reshape(-1, V), target[:, k - 1 :].reshape(-1))
    return out


@pytest.mark.parametrize("heads", ["separate", "shared"])
def test_transformer_lm_terms_equal_independent_computations(heads):
    model = lm(heads)
    tokens, target = tokens_and_target()
    states = layer_outputs(model, lambda: model(tokens))
    logits, aux = model(tokens, target=target)
    hidden = model.final_norm(states[-1])
    assert torch.equal(logits, model(tokens)[0])  # the heads do not change the main output
    expected = expected_terms(model, states, hidden, target, lambda x: model.output(model.final_norm(x)))
    assert sorted(aux) == sorted(expected) == ["layer_1_nll", "layer_2_nll", "target_2_nll", "target_3_nll"]
    for name, value in expected.items():
        assert aux[name].item() == pytest.approx(value.item(), rel=1e-5), name


@pytest.mark.parametrize("heads", ["separate", "shared"])
def test_streaming_lm_terms_read_each_layer_output_and_the_last_hidden_states(heads):
    model = streaming(heads, persistent_memory=2, keep_ffn=True)
    tokens, target = tokens_and_target()
    states = layer_outputs(model, lambda: model(tokens))
    logits, aux = model(tokens, target=target)
    assert torch.equal(logits, model(tokens)[0]) and "span_l1" in aux
    # post-LN layers: a head reads the layer's normalised output; no final norm, so shared = the output layer
    expected = expected_terms(model, states, states[-1], target, model.output)
    assert sorted(aux) == sorted([*expected, "span_l1"])
    for name, value in expected.items():
        assert aux[name].item() == pytest.approx(value.item(), rel=1e-5), name


@pytest.mark.parametrize("build", [lm, streaming])
def test_only_active_terms_are_computed_and_switched_off_heads_get_no_gradient(build):
    model = build().train()
    tokens, target = tokens_and_target()
    _, aux = model(tokens, target=target, active_aux={"layer_2_nll", "target_3_nll"})
    assert sorted(k for k in aux if k != "span_l1") == ["layer_2_nll", "target_3_nll"]
    sum(aux.values()).backward()
    heads = model.aux_heads
    assert all(p.grad is None for p in [*heads.layer_heads[0].parameters(), *heads.target_heads[0].parameters()])
    assert all(p.grad is not None for p in [*heads.layer_heads[1].parameters(), *heads.target_heads[1].parameters()])
    assert model.aux_term_parameters("layer_1_nll") == list(heads.layer_heads[0].parameters())
    assert model.aux_term_parameters("target_3_nll") == list(heads.target_heads[1].parameters())


def test_heads_off_by_default_add_nothing():
    for model in (TransformerLM.create(TransformerLMConfig(), V), StreamingLM.create(StreamingLMConfig(vocab_size=V))):
        assert model.aux_heads is None and not any(k.startswith("aux_heads") for k in model.state_dict())
        assert "aux_head_parameters" not in model.parameter_breakdown()
    assert TransformerLM.create(TransformerLMConfig(), V).aux_term_names() == []
    assert StreamingLM.create(StreamingLMConfig(vocab_size=V)).aux_term_names() == ["span_l1"]
    assert streaming().aux_term_names() == ["span_l1", "layer_1_nll", "layer_2_nll", "target_2_nll", "target_3_nll"]


def test_config_errors():
    with pytest.raises(ConfigError) as error:
        lm(adaptive_softmax=True, adaptive_cutoffs=[5], tie_embeddings=False)
    assert str(error.value) == "model.aux_heads need a plain output layer: set model.adaptive_softmax=false"
    with pytest.raises(ConfigError) as error:
        streaming(adaptive_softmax=True, adaptive_cutoffs=[5])
    assert str(error.value) == "model.aux_heads need a plain output layer: set model.adaptive_softmax=false"
    with pytest.raises(ConfigError) as error:
        lm("none", 0)
    assert str(error.value) == "model.aux_heads.n_targets must be >= 1, got 0"


def test_char_transformer_checkpoints_of_the_heads_before_the_module_still_load():
    torch.manual_seed(0)
    cfg = CharTransformerConfig(n_layers=3, d_model=D, n_heads=2, d_ff=32, dropout=0.0, max_positions=32, n_targets=3)
    model = CharTransformer(cfg, V).eval()
    old = {k.replace("aux_heads.", ""): v for k, v in model.state_dict().items()}  # the keys as saved before
    assert "layer_heads.0.1.weight" in old and "target_heads.1.weight" in old
    assert with_nested_aux_heads(model, old).keys() == model.state_dict().keys()
    torch.manual_seed(1)
    fresh = CharTransformer(cfg, V).eval()
    fresh.load_state_dict(old, strict=True)
    tokens, target = tokens_and_target()
    (a, aux_a), (b, aux_b) = model(tokens, target=target), fresh(tokens, target=target)
    assert torch.equal(a, b) and all(torch.equal(aux_a[k], aux_b[k]) for k in aux_a)


@pytest.mark.parametrize("build", [lm, streaming])
@pytest.mark.parametrize("heads", ["separate", "shared"])
def test_aux_term_parameters_are_exactly_what_a_switched_off_term_leaves_without_gradient(build, heads):
    """The trainer freezes a term's parameters while its weight is 0 (also under DDP): they must be the ones
    that then get no gradient, and nothing else."""
    model = build(heads)
    tokens, target = tokens_and_target()
    names = [n for n in model.aux_term_names() if n != "span_l1"]
    assert names == ["layer_1_nll", "layer_2_nll", "target_2_nll", "target_3_nll"]
    for term in names:
        model.zero_grad(set_to_none=True)
        logits, aux = model(tokens, target=target, active_aux=set(model.aux_term_names()) - {term})
        (logits.sum() + sum(aux.values())).backward()
        without_grad = {id(p) for p in model.parameters() if p.grad is None}
        assert without_grad == {id(p) for p in model.aux_term_parameters(term)}, term
