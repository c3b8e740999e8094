"""No-repeat-n-gram blocking for beam search, as per-step tensor ops over all hypotheses at once."""

from __future__ import annotations

import torch
from torch import Tensor


def banned_token_mask(tokens: Tensor, n: int, vocab_size: int) -> Tensor:
    """(R, V) bool: True where appending the token to row r of `tokens` (R, L) would repeat an n-gram of it.

    A token is banned when the last n-1 tokens followed by it already occur as an n-gram in the row.
    """
    rows, length = tokens.shape
    banned = torch.zeros(rows, vocab_size, dtype=torch.bool, device=tokens.device)
    if n <= 0 or length < n:
        return banned
    if n == 1:
        return banned.scatter_(1, tokens, True)
    windows = tokens.unfold(1, n, 1)  # (R, W, n): every n-gram of the row
    suffix = tokens[:, length - n + 1 :]  # (R, n-1): what the next n-gram starts with
    matches = windows[:, :, :-1].eq(suffix[:, None, :]).all(-1)  # (R, W)
    # scatter_add: a token can close several n-grams, matching or not; any match bans it
    counts = torch.zeros(rows, vocab_size, dtype=torch.int32, device=tokens.device)
    counts.scatter_add_(1, windows[:, :, -1], matches.to(torch.int32))
    return counts > 0
