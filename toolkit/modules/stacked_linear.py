"""Several same-shaped linear projections of one input stacked into one weight, so one matmul computes them all.

The weight is (parts * out_features, in_features): rows [i * out, (i + 1) * out) are projection i, and
`F.linear(x, w)[..., i * out:(i + 1) * out]` equals projection i alone bit for bit on the CPU in float32 (the
output columns are independent dot products). Initialisation draws the same random numbers, in the same order,
as `parts` separate nn.Linear layers constructed one after another, so models keep their seeded weights.
"""

from __future__ import annotations

import math
from typing import Tuple

from torch import Tensor, nn


class StackedLinear(nn.Linear):
    """`parts` nn.Linear(in_features, out_features) layers in one (parts * out_features, in_features) weight."""

    def __init__(self, in_features: int, out_features: int, parts: int, bias: bool = True):
        self.parts = parts  # read by reset_parameters, which nn.Linear's constructor calls
        super().__init__(in_features, parts * out_features, bias=bias)

    def reset_parameters(self) -> None:
        # nn.Linear's own initialisation, applied part after part (weight, then bias, as each layer would)
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
        for i, weight in enumerate(weight_blocks(self)):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if self.bias is not None:
                nn.init.uniform_(self.bias.chunk(self.parts)[i], -bound, bound)


def weight_blocks(linear: nn.Linear) -> Tuple[Tensor, ...]:
    """The weight of each projection a linear layer holds (views): one per part of a StackedLinear."""
    return linear.weight.chunk(getattr(linear, "parts", 1))
