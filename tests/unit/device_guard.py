"""A CPU stand-in for "this tensor would be on the wrong device on a GPU".

On a CPU-only machine every tensor is on the CPU, so `torch.arange(n)` inside a model's forward (which on a
GPU creates a CPU tensor next to CUDA activations and fails, or silently copies) goes unnoticed. Under
`HostTensorGuard(model, inputs...)`, the model's parameters and buffers and the given inputs count as
"device" tensors, as does every result computed from a device tensor, every factory result with an explicit
`device=` and every `.to(device)`. Everything else (`torch.arange(n)`, `torch.from_numpy`, `.cpu()`) is a
"host" tensor. An op that mixes a host tensor of one or more dimensions with a device tensor raises
`DeviceMixError` naming the op: exactly the calls that fail with "Expected all tensors to be on the same
device" on a GPU (0-dim CPU tensors mix legally with CUDA ones, so they pass here too). A device given as
the literal string "cpu" marks deliberate host code (usage counters) and counts as host.

Host code that deliberately builds index tensors on the CPU and moves them (`.to(device)`) passes.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

TAG = "_device_guard_on_device"

# Functions that create a tensor on the default device unless given `device=`.
FACTORIES = {
    torch.arange,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.tensor,
    torch.as_tensor,
    torch.eye,
    torch.linspace,
    torch.logspace,
    torch.tril_indices,
    torch.triu_indices,
    torch.from_numpy,
    torch.scalar_tensor,
}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
# Reading metadata or leaving torch: no device work.
PASSIVE = {
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__len__,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.__format__,
    torch.Tensor.__repr__,
}


HOST, DEVICE = "host", "device"


class DeviceMixError(RuntimeError):
    pass


def on_device(t: torch.Tensor) -> bool:
    return bool(getattr(t, TAG, False))


def _tag(values: Iterable[Any], device: bool) -> None:
    for v in values:
        if isinstance(v, torch.Tensor):
            try:
                setattr(v, TAG, device)
            except (AttributeError, RuntimeError):  # some internal tensors refuse attributes
                pass


def _target(args: tuple, kwargs: dict) -> Any:
    """The device a move or factory call names: None (none named), HOST or DEVICE."""
    named = [kwargs[k] for k in ("device", "other") if k in kwargs]
    named += [a for a in args[1:] if isinstance(a, (torch.device, str, torch.Tensor)) or type(a) is int]
    if not named:
        return None
    # the literal string "cpu" is deliberate host code (e.g. usage counters); a torch.device object is
    # normally some tensor's `.device`, i.e. the model's device on a GPU
    return HOST if named[0] == "cpu" else DEVICE


class HostTensorGuard(TorchFunctionMode):
    """Raise DeviceMixError where an op mixes host tensors with the device tensors (see the module docstring).
    `device_values`: modules (their parameters and buffers) and tensors, or containers of them."""

    def __init__(self, *device_values: Any):
        super().__init__()
        for value in tree_flatten(list(device_values))[0]:
            if isinstance(value, nn.Module):
                _tag(list(value.parameters()) + list(value.buffers()), True)
            else:
                _tag([value], True)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in PASSIVE:
            return result
        outputs, _ = tree_flatten(result)
        if func in FACTORIES:
            device = kwargs.get("device")  # positional arguments of factories are sizes and values
            _tag(outputs, device is not None and _target((), {"device": device}) == DEVICE)
            return result
        if func in MOVES and _target(args, kwargs) is not None:
            _tag(outputs, _target(args, kwargs) == DEVICE)
            return result
        if func is torch.Tensor.cpu:
            _tag(outputs, False)
            return result
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not inputs:
            return result
        host = [t for t in inputs if not on_device(t)]
        device = [t for t in inputs if on_device(t)]
        if host and device and any(t.dim() > 0 for t in host):
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
            raise DeviceMixError(
                f"{name} mixes a tensor created without device= ({list(host[0].shape)}) with a device tensor "
                f"({list(device[0].shape)})"
            )
        _tag(outputs, bool(device))
        return result
