"""Adaptive softmax (Grave et al. 2017, as used by Baevski & Auli 2019): an exact, factorised softmax.

The vocabulary is split into bands by cutoffs (as in `AdaptiveInput`). The head scores the frequent words
[0, cutoffs[0]) plus one logit per tail band; tail band i scores its own words after a bias-free projection
to the reduced dimension d / factor**(i+1). The probability of a tail word is
    p(w) = p_head(band of w) * p_band(w | band),
so the distribution over the whole vocabulary is normalised exactly: this is not a sampled approximation.

Training uses `nll`, which computes a tail's logits only for the tokens whose target falls in that tail;
`log_prob` returns the full (N, V) distribution for evaluation and tests.

Tying (fairseq's tie_adaptive_weights / tie_adaptive_proj): pass the model's `AdaptiveInput` to the
constructor. `tie` shares the head word weights with input band 0 and each tail's output weights with the
input band's embedding table; `tie_proj` shares each tail's projection with the input band's projection
(transposed). Shared tensors are the same Parameter objects, so they have one storage and one gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.modules.adaptive_input import AdaptiveInput, band_cutoffs, band_dims


@dataclass
class AdaptiveSoftmaxConfig:
    """Adaptive softmax output layer; the input size d comes from the model."""

    cutoffs: List[int] = field(default_factory=lambda: [20000, 60000])
    """Band boundaries in id space; empty means a plain full softmax. Cutoffs >= vocabulary size are dropped."""
    factor: float = 4.0
    """Tail band i (counting the head as band 0) has projection dimension d / factor**i."""
    dropout: float = 0.0
    """Dropout between a tail's projection and its output layer (fairseq's adaptive_softmax_dropout)."""
    tie: bool = False
    """Share the head word weights and the tail output weights with the AdaptiveInput's embeddings."""
    tie_proj: bool = False
    """Share the tail projections with the AdaptiveInput's projections (transposed)."""


class AdaptiveSoftmax(nn.Module):
    """Hidden states (..., d) -> exact log-probabilities over a frequency-banded vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        input_dim: int,
        cfg: AdaptiveSoftmaxConfig,
        adaptive_input: Optional[AdaptiveInput] = None,
    ):
        super().__init__()
        self.vocab_size, self.input_dim = vocab_size, input_dim
        self.cutoffs = band_cutoffs(list(cfg.cutoffs), vocab_size)
        self.dims = band_dims(input_dim, float(cfg.factor), len(self.cutoffs))
        self.n_tails = len(self.cutoffs) - 1
        if (cfg.tie or cfg.tie_proj) and adaptive_input is None:
            raise ConfigError("adaptive softmax tie/tie_proj=true needs the model's AdaptiveInput to tie to")
        if adaptive_input is not None and (cfg.tie or cfg.tie_proj):
            _check_tieable(self, adaptive_input)
        tied = adaptive_input if cfg.tie else None
        tied_proj = adaptive_input if cfg.tie_proj else None

        self.head_words = tied.weights_for_band(0)[0] if tied else _new_weight(self.cutoffs[0], input_dim)
        # one logit per tail band; none without tails (an unused parameter would upset DDP)
        self.head_clusters = _new_weight(self.n_tails, input_dim) if self.n_tails else None
        self.tail_proj = nn.ParameterList()
        self.tail_out = nn.ParameterList()
        for i in range(1, len(self.cutoffs)):
            size, dim = self.cutoffs[i] - self.cutoffs[i - 1], self.dims[i]
            # a tied projection is the input's (d, dim) weight, used transposed; an own one is stored (d, dim) too
            self.tail_proj.append(tied_proj.weights_for_band(i)[1] if tied_proj else _new_weight(input_dim, dim))
            self.tail_out.append(tied.weights_for_band(i)[0] if tied else _new_weight(size, dim))
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("_bounds", torch.tensor(self.cutoffs[:-1], dtype=torch.long), persistent=False)

    def head_log_prob(self, hidden: Tensor) -> Tensor:
        """(N, d) -> (N, cutoffs[0] + n_tails): log-probabilities of the head words, then of each tail band."""
        weight = self.head_words if self.head_clusters is None else torch.cat([self.head_words, self.head_clusters])
        return F.log_softmax(F.linear(hidden, weight), dim=-1, dtype=torch.float32)

    def tail_log_prob(self, i: int, hidden: Tensor) -> Tensor:
        """(N, d) -> (N, size of tail i): log-probabilities within tail band i (0-based over tails)."""
        projected = self.dropout(hidden @ self.tail_proj[i])
        return F.log_softmax(F.linear(projected, self.tail_out[i]), dim=-1, dtype=torch.float32)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """(..., d) -> (..., V) float32 log-probabilities over the whole vocabulary (they sum to 1)."""
        flat = hidden.reshape(-1, self.input_dim)
        head = self.head_log_prob(flat)
        head_words = self.cutoffs[0]
        parts = [head[:, :head_words]]
        for i in range(self.n_tails):
            parts.append(self.tail_log_prob(i, flat) + head[:, head_words + i, None])
        return torch.cat(parts, dim=1).view(*hidden.shape[:-1], self.vocab_size)

    def nll(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token negative log-likelihood (float32, shape of target) of target ids given hidden (..., d).

        Exact; tail band i is computed only for the rows whose target lies in it (one gather per band).
        """
        flat, tgt = hidden.reshape(-1, self.input_dim), target.reshape(-1)
        band = torch.bucketize(tgt, self._bounds, right=True)  # 0 = head, i + 1 = tail i
        head_words = self.cutoffs[0]
        head_target = torch.where(band == 0, tgt, head_words + band - 1)
        nll = -self.head_log_prob(flat).gather(1, head_target[:, None]).squeeze(1)
        for i in range(self.n_tails):
            idx = (band == i + 1).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            inner = tgt.index_select(0, idx) - self.cutoffs[i]
            tail = self.tail_log_prob(i, flat.index_select(0, idx))
            nll = nll.index_add(0, idx, -tail.gather(1, inner[:, None]).squeeze(1))
        return nll.view(target.shape)

    def forward(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Same as `nll`."""
        return self.nll(hidden, target)


def _new_weight(rows: int, cols: int) -> nn.Parameter:
    weight = nn.Parameter(torch.empty(rows, cols))
    nn.init.xavier_uniform_(weight)
    return weight


def _check_tieable(softmax: AdaptiveSoftmax, adaptive_input: AdaptiveInput) -> None:
    """Tying needs the same bands, band dimensions and model dimension on both sides."""
    if adaptive_input.cutoffs != softmax.cutoffs or adaptive_input.dims != softmax.dims:
        raise ConfigError(
            f"cannot tie adaptive softmax (cutoffs {softmax.cutoffs}, dims {softmax.dims}) to adaptive input "
            f"(cutoffs {adaptive_input.cutoffs}, dims {adaptive_input.dims}): use the same cutoffs, factor and d"
        )
