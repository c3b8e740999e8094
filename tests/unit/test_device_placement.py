"""GPU readiness on CPU: every model path creates its tensors on the model's device, and runs under bf16
autocast with finite losses and float32 where precision matters.

Paths: each golden case's own run (eval forward, beam search beam 1 and 4, streamed blocks with the cache
carried and scored sub-streams, PKM training forward) plus a training forward/backward of every model.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from tests.unit.device_guard import DeviceMixError, HostTensorGuard
from tests.unit.golden_cases import CASES, CASES_BY_NAME, PKM_LAYER, Case, build_model, perturb, plain_config
from toolkit.models.base import ToolkitModel
from toolkit.modules.attention.adaptive_span import DynamicSpanMask, window_distances
from toolkit.modules.pkm import PKMConfig, ProductKeyMemory


def fresh(case: Case) -> tuple[nn.Module, Dict[str, Any]]:
    torch.manual_seed(0)
    model = build_model(case.model, plain_config(case.model, case.config), case.task, case.memory)
    perturb(model, 0)
    if case.prepare is not None:
        case.prepare(model)
    return model, case.inputs(torch.Generator().manual_seed(0))


def scores_own_output(model: nn.Module) -> bool:
    """An adaptive-softmax model (the stand-alone PKM layer case is no model at all)."""
    return isinstance(model, ToolkitModel) and model.scores_own_output


def token_loss(model: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    if scores_own_output(model):
        return model.output_nll(output, target).mean()
    return F.cross_entropy(output.float().transpose(1, 2), target, ignore_index=1)


def training_loss(case: Case, model: nn.Module, inputs: Dict[str, Any]) -> Tensor:
    """Main loss plus every auxiliary term, from one training-mode forward (two blocks for streamed models)."""
    model.train()
    if case.model == PKM_LAYER:
        return model(inputs["x"], padding_mask=inputs["padding_mask"]).float().pow(2).mean()
    if case.model == "transformer":
        output, aux = model(inputs["src"], inputs["prev"])
        target = inputs["prev"]
    elif case.model == "streaming_lm":
        blocks, target = inputs["blocks"], inputs["block_targets"]
        model(blocks[0], target=target, reset=True)
        output, aux = model(blocks[1], target=target, reset=False)
    elif case.model == "char_transformer":
        output, aux = model(inputs["tokens"], target=inputs["target"])
        target = inputs["target"]
    else:
        output, aux = model(inputs["tokens"])
        target = inputs["target"]
    return token_loss(model, output, target) + sum(aux.values(), torch.zeros(()))


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_no_tensor_is_created_off_the_model_device(name: str) -> None:
    case = CASES_BY_NAME[name]
    model, inputs = fresh(case)
    with HostTensorGuard(model, inputs):
        case.run(model, inputs)
        model.zero_grad(set_to_none=True)
        training_loss(case, model, inputs).backward()
        if isinstance(model, ToolkitModel):  # not the stand-alone PKM layer case
            model.metrics()  # MAE gate statistics, learned spans, product-key memory usage


def test_the_guard_catches_a_tensor_made_without_device() -> None:
    x = torch.randn(2, 3)
    with HostTensorGuard(x), pytest.raises(DeviceMixError, match="created without device="):
        x + torch.arange(3)
    with HostTensorGuard(x):  # explicit device, a moved host tensor and 0-dim scalars are fine
        x + torch.arange(3, device=x.device) + torch.arange(3).to(x.device) + torch.tensor(2.0)


class SoftmaxDtypes(TorchFunctionMode):
    """Records the output dtype of every softmax / log_softmax call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in ("softmax", "log_softmax") and isinstance(result, Tensor):
            self.seen.append((name, result.dtype))
        return result


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_bf16_autocast_gives_finite_losses_and_float32_probabilities(name: str) -> None:
    case = CASES_BY_NAME[name]
    model, inputs = fresh(case)
    memories = [m for m in model.modules() if isinstance(m, ProductKeyMemory)]
    for memory in memories:
        memory.track_usage = True
    with torch.autocast("cpu", dtype=torch.bfloat16), SoftmaxDtypes() as softmaxes:
        loss = training_loss(case, model, inputs)
        loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(dtype == torch.float32 for _, dtype in softmaxes.seen), softmaxes.seen  # explicit softmaxes
    for memory in memories:
        assert memory.last_weights.dtype == torch.float32
    for module in model.modules():
        if getattr(module, "last_gate", None) is not None:
            assert module.last_gate.dtype == torch.float32
    if scores_own_output(model):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            hidden = model(inputs["tokens"])[0] if "tokens" in inputs else model(inputs["blocks"][0])[0]
            assert model.output_nll(hidden, inputs.get("target", inputs.get("block_targets"))).dtype == torch.float32
            assert model.output_log_prob(hidden).dtype == torch.float32


def test_pkm_scores_and_spans_stay_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    memory = ProductKeyMemory(12, 10, PKMConfig(mem_size=49, key_dim=8, heads=2, knn=3))
    span = DynamicSpanMask(12, 2, max_span=8192, ramp=32, init=0.5)
    x = torch.randn(5, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, _ = memory.lookup(memory.query(x))
        z = span.spans(x[None])
        distances = window_distances(8192, torch.zeros((), dtype=torch.bfloat16))
    assert scores.dtype == z.dtype == distances.dtype == torch.float32
    assert distances[0] == 8191  # exact: bfloat16 would round it to 8192
