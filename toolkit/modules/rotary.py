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
    """Rotates (B, H, T, head_dim) queries or keys to their positions; one instance serves every layer."""

    def __init__(self, head_dim: int, max_positions: int, base: float = ROTARY_BASE):
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions rotate pairs of dimensions: head_dim={head_dim} must be even")
        inverse_wavelengths = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inverse_wavelengths[None, :]
        angles = torch.cat([angles, angles], dim=1)  # both members of a pair turn by the same angle
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x (B, H, T, head_dim) at positions offset .. offset + T - 1 (offset: steps already in a cache)."""
        t = x.size(2)
        if offset + t > self.cos.size(0):
            raise ConfigError(f"position {offset + t - 1} is beyond model.max_positions={self.cos.size(0)}")
        cos, sin = self.cos[offset : offset + t].to(x.dtype), self.sin[offset : offset + t].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin
