"""Adaptive attention span (Sukhbaatar et al. 2019): a learned soft window per head, or per position.

Attention weights come as (B, H, M, L): M queries, each looking at a window of L keys laid out by distance,
slot j of the window holding the key at distance x = L - 1 - j (the last slot is the query's own position).
The soft mask m(x) = clamp((R + z - x) / R, 0, 1) multiplies the softmax weights, which are then renormalised
(a / (sum a + 1e-8)), as in facebookresearch/adaptive-span. Because m(x) = 0 for x >= z + R, keys farther
than `window_length` can be dropped before any work is done: that is where the speed and memory come from.

Two variants share this interface (`spans`, `apply`, `window_length`, `span_loss`, `clamp_`, `stats`):
- `AdaptiveMask`: one span parameter r in [0, 1] per head, z = r * S (paper section 2.1).
- `DynamicSpanMask`: z_t = S * sigmoid(v^T x_t + b) per position and head (paper section 2.2; the reference
  code never implemented it). Its window is data dependent: the largest z_t in the batch (all heads and
  positions) plus the ramp, rounded up like the static one, so that no query loses a key it would weight.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

SPAN_ROUNDING = 64  # windows are multiples of this, so tensor shapes (and allocator blocks) change rarely


def window_length(max_z: float, ramp: int, max_span: int) -> int:
    """Keys needed for spans up to `max_z`: ceil(max_z + ramp) rounded up to SPAN_ROUNDING, capped at S."""
    needed = max(1, math.ceil(max_z + ramp))
    return min(max_span, SPAN_ROUNDING * math.ceil(needed / SPAN_ROUNDING))


def soft_mask(z: Tensor, distances: Tensor, ramp: int) -> Tensor:
    """m(x) = clamp((R + z - x) / R, 0, 1); with R = 0 a hard window x <= z (no gradient to z)."""
    if ramp == 0:
        return (distances <= z).to(z.dtype)
    return ((ramp + z - distances) / ramp).clamp(0.0, 1.0)


def window_distances(length: int, like: Tensor) -> Tensor:
    """Distances of the L window slots, oldest first: [L-1, ..., 1, 0]; at least float32 (bfloat16 holds
    integers exactly only up to 256, so a half-precision span mask would be wrong far from the query)."""
    return torch.arange(length - 1, -1, -1, device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def renormalise(context: Tensor, persistent: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Divide masked weights by their joint sum (+1e-8), context and persistent slots together."""
    total = context.sum(-1, keepdim=True)
    if persistent is not None:
        total = total + persistent.sum(-1, keepdim=True)
    total = total + 1e-8
    return context / total, (None if persistent is None else persistent / total)


class AdaptiveMask(nn.Module):
    """Per-head learned span: parameter r in [0, 1] (shape (H,)), span z = r * S."""

    def __init__(self, n_heads: int, max_span: int, ramp: int = 32, init: float = 0.0):
        super().__init__()
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"span init {init} is outside [0, 1]")
        self.max_span, self.ramp = max_span, ramp
        self.span_param = nn.Parameter(torch.full((n_heads,), float(init)))

    def spans(self, x: Optional[Tensor] = None) -> Tensor:
        """z per head, shape (H,); `x` (the layer input) is ignored: the span does not depend on it."""
        return self.span_param * self.max_span

    def apply(self, attn: Tensor, z: Tensor) -> Tensor:
        """Mask (B, H, M, L) softmax weights by distance (not renormalised; see `renormalise`)."""
        distances = window_distances(attn.size(-1), attn)
        return attn * soft_mask(z[:, None, None], distances, self.ramp)

    def forward(self, attn: Tensor, normalize: bool = True) -> Tensor:
        """Masked and (by default) renormalised weights, for a (B, H, M, L) window."""
        masked = self.apply(attn, self.spans())
        return renormalise(masked, None)[0] if normalize else masked

    def window_length(self, z: Optional[Tensor] = None) -> int:
        """Keys each query needs (the trim length): see `current_max_span`."""
        return self.current_max_span()

    def current_max_span(self) -> int:
        """max z + R rounded up to a multiple of 64, capped at S."""
        return window_length(self.spans().max().item(), self.ramp, self.max_span)

    def span_loss(self, z: Optional[Tensor] = None) -> Tensor:
        """Mean over heads of z (the L1 term; the caller sums over layers and weights it)."""
        return self.spans().mean()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep r in [0, 1]; call after every optimizer step."""
        self.span_param.clamp_(0.0, 1.0)

    @torch.no_grad()
    def stats(self) -> Tensor:
        """Current span z per head (H,), detached."""
        return self.spans().detach().float().cpu()


class DynamicSpanMask(nn.Module):
    """Span predicted from the query's input: z_t = S * sigmoid(v_h^T x_t + b_h), per head h.

    v starts at zero so every position starts at the static initial span; b = logit(init) with init
    clamped to [1e-3, 1 - 1e-3] (a sigmoid cannot reach 0 or 1; the paper gives no initialisation).
    """

    def __init__(self, d_model: int, n_heads: int, max_span: int, ramp: int = 32, init: float = 0.0):
        super().__init__()
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"span init {init} is outside [0, 1]")
        self.max_span, self.ramp = max_span, ramp
        self.predictor = nn.Linear(d_model, n_heads)
        nn.init.zeros_(self.predictor.weight)
        p = min(max(init, 1e-3), 1.0 - 1e-3)
        nn.init.constant_(self.predictor.bias, math.log(p / (1.0 - p)))
        self._last_spans: Optional[Tensor] = None  # mean z per head of the last forward, for `stats`

    def spans(self, x: Optional[Tensor] = None) -> Tensor:
        """z per batch row, head and position: (B, M, D) -> (B, H, M)."""
        if x is None:
            raise ValueError("a dynamic span needs the layer input to predict the span")
        # float32 even under autocast: a half-precision span near S = 8192 would be off by up to 32 positions
        logits = self.predictor(x)
        z = self.max_span * torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32))).transpose(1, 2)
        self._last_spans = z.detach().float().mean(dim=(0, 2))
        return z

    def apply(self, attn: Tensor, z: Tensor) -> Tensor:
        """Mask (B, H, M, L) softmax weights with each query's own span (not renormalised)."""
        distances = window_distances(attn.size(-1), attn)
        return attn * soft_mask(z[..., None], distances, self.ramp)

    def window_length(self, z: Optional[Tensor] = None) -> int:
        """Largest z_t of the batch (heads, positions) plus the ramp, rounded up to 64, capped at S."""
        if z is None:
            return self.max_span
        return window_length(z.max().item(), self.ramp, self.max_span)

    def span_loss(self, z: Optional[Tensor] = None) -> Tensor:
        """Mean of z_t over batch, heads and positions of the last forward (`z` from `spans`)."""
        if z is None:
            raise ValueError("a dynamic span loss needs the spans of a forward pass")
        return z.mean()

    def clamp_(self) -> None:
        """Nothing to clamp: the sigmoid keeps z in (0, S)."""

    @torch.no_grad()
    def stats(self) -> Tensor:
        """Mean predicted span per head (H,) over the last forward (before any: the span of x = 0)."""
        if self._last_spans is None:
            return (self.max_span * torch.sigmoid(self.predictor.bias)).detach().float().cpu()
        return self._last_spans.cpu()


SpanMask = nn.Module  # AdaptiveMask or DynamicSpanMask (duck-typed interface above)
