"""Mixed precision: autocast dtype and grad scaler from the `precision` key (fp32 on CPU)."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from toolkit.config.choices import Precision

# every Precision has its dtype (the config's Enum rejected any other value when it was composed)
DTYPES = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def autocast(precision: str, device: torch.device) -> ContextManager:
    dtype = DTYPES[Precision(precision)]
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only; a disabled scaler passes values through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
