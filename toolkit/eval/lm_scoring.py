"""Sliding-window scoring of a token stream: every target scored exactly once.

Windows of `window` inputs start every `stride` tokens; a window scores only the targets that no earlier
window scored (the first window scores all of its own), so each target after the first window is
predicted with at least `window - stride` tokens of history. stride == window gives non-overlapping
blocks; stride == 1 is the exact (slow) protocol where each character sees a full window.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]  # tokens (B, W) -> logits (B, W, V)


def window_plan(n_targets: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the windows and, per window, the first in-window position it scores."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window]; got stride={stride}, window={window}")
    window = min(window, n_targets)
    last_start = n_targets - window
    starts = np.arange(0, last_start + stride, stride, dtype=np.int64)
    starts = np.minimum(starts, last_start)
    starts = np.unique(starts)
    ends = starts + window
    previous_end = np.concatenate([[0], ends[:-1]])
    first_scored = previous_end - starts  # in-window index of the first new target
    return starts, first_scored


@torch.no_grad()
def score_stream(
    logits_fn: LogitsFn,
    tokens: np.ndarray,
    window: int,
    stride: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    max_tokens: Optional[int] = None,
    per_token: Optional[np.ndarray] = None,
) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over tokens[1:] and the number of targets scored; `per_token` (float64, one
    entry per target) receives each target's NLL."""
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n_targets = data.numel() - 1
    starts, first_scored = window_plan(n_targets, window, stride)
    width = min(window, n_targets)
    offsets = torch.arange(width)
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        batch_starts = torch.from_numpy(starts[i : i + batch_size])
        index = batch_starts[:, None] + offsets[None, :]
        inputs, targets = data[index].to(device), data[index + 1].to(device)
        logits = logits_fn(inputs).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        keep = offsets[None, :].to(device) >= torch.from_numpy(first_scored[i : i + batch_size]).to(device)[:, None]
        if per_token is not None:
            per_token[index[keep.cpu()].numpy()] = nll[keep].double().cpu().numpy()
        total += nll[keep].sum().item()
        count += int(keep.sum().item())
    return total, count
