"""Golden outputs: every model's outputs on fixed weights and fixed inputs are bit-for-bit those recorded.

The fixtures (tests/fixtures/golden/*.golden, written by scripts/make_golden_outputs.py) hold each case's
plain config, state_dict, inputs and outputs. Each test rebuilds the model from the config, loads the
weights and compares every output with torch.equal: logits, log-probs, auxiliary losses, MAE gates, span
terms, streamed blocks and caches, beam hypotheses and scores, gradients and BatchNorm statistics. All of
these paths are deterministic on CPU with one thread (conftest pins it), so no tolerance is needed.

A failure means the numerics changed. Find out why; re-record only when the change is intended.
"""

from __future__ import annotations

import pytest
import torch

from tests.unit.golden_cases import CASES, PKM_LAYER, differences, expected_outputs, fixture_path, replay
from toolkit.registry import MODELS


def load(name: str) -> dict:
    return torch.load(fixture_path(name), weights_only=True)  # plain containers and tensors only


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_outputs_equal_the_recorded_ones(name: str) -> None:
    assert torch.get_num_threads() == 1
    fixture = load(name)
    assert fixture["case"] == name and fixture["format"] == 1
    problems = differences(expected_outputs(fixture), replay(fixture), name)
    assert not problems, "\n".join(problems[:20])


def test_every_registered_model_has_a_golden_case() -> None:
    covered = {case.model for case in CASES}
    assert set(MODELS.names()) <= covered
    assert PKM_LAYER in covered


def test_a_changed_weight_is_caught() -> None:
    """The comparison itself is strict: one LayerNorm gain moved by one ulp changes the logits."""
    fixture = load("lm_plain")
    weight = fixture["state_dict"]["final_norm.weight"]
    weight[0] = torch.nextafter(weight[0], torch.tensor(float("inf")))
    assert differences(fixture["outputs"], replay(fixture))
