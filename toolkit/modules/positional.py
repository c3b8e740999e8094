"""Position embeddings: learned or sinusoidal (Vaswani et al. 2017), and learned tables added at the layers'
inputs (Al-Rfou et al. 2019)."""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import Tensor, nn


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position table (not a parameter; not saved in checkpoints)."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000.0) / max(half - 1, 1)))
        angles = torch.arange(max_positions, dtype=torch.float)[:, None] * freqs[None, :]
        table = torch.cat([angles.sin(), angles.cos()], dim=1)
        if dim % 2:
            table = torch.cat([table, torch.zeros(max_positions, 1)], dim=1)
        self.register_buffer("table", table, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]


class LearnedPositions(nn.Embedding):
    """A trainable table of position vectors."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__(max_positions, dim)
        nn.init.normal_(self.weight, mean=0.0, std=dim**-0.5)

    def forward(self, positions: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(positions)


class PositionKind(StrEnum):
    """Position embeddings: a learned table or fixed sinusoids."""

    learned = "learned"
    sinusoidal = "sinusoidal"


def build_positions(kind: str, max_positions: int, dim: int) -> nn.Module:
    if kind == "learned":
        return LearnedPositions(max_positions, dim)
    if kind == "sinusoidal":
        return SinusoidalPositions(max_positions, dim)
    raise ValueError(f"unknown position embedding '{kind}' (valid: learned, sinusoidal)")


def layer_position_tables(n_tables: int, max_positions: int, dim: int) -> nn.Parameter:
    """Learned position tables (n_tables, max_positions, dim), N(0, dim^-1/2): table i is added at the input of
    layer i (T64: one per layer; a single table: at the first layer only)."""
    return nn.Parameter(torch.randn(n_tables, max_positions, dim) * dim**-0.5)
