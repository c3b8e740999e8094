"""The model contract: every registered model derives from ToolkitModel, whose hooks default to no-ops."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from toolkit.config.compose import load_registries
from toolkit.models.base import ToolkitModel
from toolkit.models.char_transformer import CharTransformer, CharTransformerConfig
from toolkit.registry import MODELS


def test_every_registered_model_derives_from_the_base():
    load_registries()
    assert MODELS.names() == ["char_transformer", "streaming_lm", "transformer", "transformer_lm"]
    for name in MODELS.names():
        assert issubclass(MODELS.get(name).builder, ToolkitModel), name


@dataclass
class PlainConfig:
    name: str = "plain"


def test_the_registry_refuses_a_model_that_does_not():
    load_registries()
    before = MODELS.names()

    class Plain(nn.Module):
        pass

    with pytest.raises(TypeError) as error:
        MODELS.register("plain_model", PlainConfig)(Plain)
    assert str(error.value) == (
        "model 'plain_model': test_the_registry_refuses_a_model_that_does_not.<locals>.Plain must be a subclass "
        "of toolkit.models.base.ToolkitModel"
    )
    assert MODELS.names() == before  # nothing half-registered


def test_the_base_adds_no_state_and_its_hooks_do_nothing():
    model = ToolkitModel()
    assert list(model.parameters()) == [] and list(model.buffers()) == [] and model.state_dict() == {}
    assert model.aux_term_names() == [] and model.aux_term_parameters("any") == []
    assert model.metrics() == {} and model.parameter_breakdown() == {} and model.compiled_methods() == ()
    assert model.after_update() is None and model.stream_state() is None and model.load_stream_state(None) is None
    assert model.shared_output_weight() is None
    assert not model.scores_own_output and not model.carries_stream_cache
    with pytest.raises(NotImplementedError):
        model.output_nll(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("heads", ["separate", "shared"])
def test_aux_term_parameters_are_exactly_what_a_switched_off_term_leaves_without_gradient(heads):
    """The trainer freezes a term's parameters while its weight is 0: they must be the ones that then get no
    gradient, and nothing else."""
    torch.manual_seed(0)
    cfg = CharTransformerConfig(
        n_layers=3, d_model=16, n_heads=2, d_ff=32, dropout=0.0, max_positions=32, n_targets=3, intermediate_heads=heads
    )
    model = CharTransformer(cfg, 11)
    chars = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(0))
    names = model.aux_term_names()
    assert names == ["layer_1_nll", "layer_2_nll", "target_2_nll", "target_3_nll"]
    for term in names:
        model.zero_grad(set_to_none=True)
        logits, aux = model(chars[:, :-1], target=chars[:, 1:], active_aux=set(names) - {term})
        (logits.sum() + sum(aux.values())).backward()
        without_grad = {id(p) for p in model.parameters() if p.grad is None}
        assert without_grad == {id(p) for p in model.aux_term_parameters(term)}, term
