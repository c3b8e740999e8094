"""Rotary position embedding (Su et al. 2021, RoFormer): positions as rotations of queries and keys.

Each head's query and key vectors are split into pairs (i, i + head_dim/2), the "rotate half" pairing of
GPT-NeoX and LLaMA, and pair i at position m is rotated by the angle m * base^(-2i/head_dim). The dot product
of a query at m and a key at n then depends on the positions only through m - n, so attention sees relative
positions while the model adds nothing to its inputs. It has no parameters and nothing in a checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError

ROTARY_BASE = 10000.0  # the wavelength scale of the original paper


class RotaryPositions(nn.Module):
    """Rotates queries or keys (head_dim last, time on any axis) to their positions; one instance serves every
    layer."""

    def __init__(self, head_dim: int, max_positions: int, base: float = ROTARY_BASE):
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions rotate pairs of dimensions: head_dim={head_dim} must be even")
        inverse_wavelengths = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inverse_wavelengths[None, :]
        # x rotated by a = x * cos(a) + swap(x) * sin(a) with swap(x) = (x2, x1) for x = (x1, x2) and the
        # sine's first half negated: one roll and one fused multiply-add instead of chunk, negate and concatenate
        self.register_buffer("cos", torch.cat([angles, angles], dim=1).cos().float(), persistent=False)
        self.register_buffer("sin", torch.cat([-angles, angles], dim=1).sin().float(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0, time_dim: int = -2) -> Tensor:
        """x (..., T, ..., head_dim), time on `time_dim` (default: (B, H, T, head_dim)), at positions offset ..
        offset + T - 1 (offset: steps already in a cache)."""
        t = x.size(time_dim)
        if offset + t > self.cos.size(0):
            raise ConfigError(f"position {offset + t - 1} is beyond model.max_positions={self.cos.size(0)}")
        shape = [1] * x.dim()
        shape[time_dim], shape[-1] = t, x.size(-1)
        cos = self.cos[offset : offset + t].view(shape).to(x.dtype)
        sin = self.sin[offset : offset + t].view(shape).to(x.dtype)
        return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)
