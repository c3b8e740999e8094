"""Mixed precision: autocast dtype and grad scaler from the `precision` key (fp32 on CPU)."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from toolkit.errors import ConfigError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision not in DTYPES:
        raise ConfigError(f"precision: '{precision}' (valid: {', '.join(DTYPES)})")
    dtype = DTYPES[precision]
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only; a disabled scaler passes values through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
