"""Adaptive input embeddings (Baevski & Auli 2019, "Adaptive Input Representations for Neural LMs").

The vocabulary (ids sorted by frequency, most frequent first) is split into bands by `cutoffs`: band i holds
ids [cutoffs[i-1], cutoffs[i]) and has its own embedding table of dimension d / factor**i, projected back to d
by a bias-free Linear. Frequent words get large embeddings, rare words small ones, which saves parameters and
time on a large vocabulary. The same bands and dimensions are used by `AdaptiveSoftmax`, which can share
(tie) these tables and projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError


@dataclass
class AdaptiveInputConfig:
    """Adaptive input embeddings; the embedding size d itself comes from the model."""

    cutoffs: List[int] = field(default_factory=lambda: [20000, 60000])
    """Band boundaries in id space (strictly increasing); the last band runs to the vocabulary size.
    Cutoffs at or above the vocabulary size are dropped, so tiny vocabularies work."""
    factor: float = 4.0
    """Band i has embedding dimension d / factor**i."""
    scale: bool = True
    """Multiply the output by sqrt(d) (fairseq's embed_scale); a model using this must not scale again."""


def band_cutoffs(cutoffs: List[int], vocab_size: int) -> List[int]:
    """Validated band ends: the given cutoffs below vocab_size, then vocab_size itself.

    [20000, 60000] with vocab 267744 -> [20000, 60000, 267744]; with vocab 15000 -> [15000].
    """
    if vocab_size < 1:
        raise ConfigError(f"adaptive cutoffs: vocabulary size must be positive, got {vocab_size}")
    cutoffs = [int(c) for c in cutoffs]
    if any(c <= 0 for c in cutoffs) or any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ConfigError(f"adaptive cutoffs must be positive and strictly increasing, got {cutoffs}")
    return [c for c in cutoffs if c < vocab_size] + [vocab_size]


def band_dims(dim: int, factor: float, n_bands: int) -> List[int]:
    """Embedding dimension of each band: int(dim // factor**i), as fairseq computes it."""
    if factor < 1.0:
        raise ConfigError(f"adaptive factor must be >= 1, got {factor}")
    dims = [int(dim // (factor**i)) for i in range(n_bands)]
    if dims[-1] < 1:
        raise ConfigError(f"adaptive band {n_bands - 1} has dimension 0 (d={dim}, factor={factor}); use fewer cutoffs")
    return dims


class AdaptiveInput(nn.Module):
    """Token ids (any shape) -> embeddings (same shape + (dim,)), one embedding table per frequency band."""

    def __init__(self, vocab_size: int, dim: int, cfg: AdaptiveInputConfig, padding_idx: Optional[int] = None):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        self.cutoffs = band_cutoffs(list(cfg.cutoffs), vocab_size)
        self.factor = float(cfg.factor)
        self.dims = band_dims(dim, self.factor, len(self.cutoffs))
        self.scale = math.sqrt(dim) if cfg.scale else 1.0
        self.padding_idx = padding_idx
        starts = [0] + self.cutoffs[:-1]
        self.embeddings = nn.ModuleList()
        self.projections = nn.ModuleList()
        for start, end, band_dim in zip(starts, self.cutoffs, self.dims):
            # the padding row lives in whichever band holds padding_idx (the head, with fairseq's ids)
            pad = padding_idx - start if padding_idx is not None and start <= padding_idx < end else None
            embedding = nn.Embedding(end - start, band_dim, padding_idx=pad)
            nn.init.normal_(embedding.weight, mean=0.0, std=band_dim**-0.5)
            if pad is not None:
                nn.init.zeros_(embedding.weight[pad])
            projection = nn.Linear(band_dim, dim, bias=False)
            nn.init.xavier_uniform_(projection.weight)
            self.embeddings.append(embedding)
            self.projections.append(projection)
        self.register_buffer("_bounds", torch.tensor(self.cutoffs[:-1], dtype=torch.long), persistent=False)

    def weights_for_band(self, band: int) -> Tuple[nn.Parameter, nn.Parameter]:
        """(embedding weight (size, dim_band), projection weight (dim, dim_band)) of a band, for tying."""
        return self.embeddings[band].weight, self.projections[band].weight

    def forward(self, tokens: Tensor) -> Tensor:
        flat = tokens.reshape(-1)
        # band of each token; one masked gather per band (2-3 bands), never a loop over tokens
        band = torch.bucketize(flat, self._bounds, right=True)
        out: Optional[Tensor] = None
        for i, start in enumerate([0] + self.cutoffs[:-1]):
            idx = (band == i).nonzero().squeeze(1)
            emb = self.projections[i](self.embeddings[i](flat.index_select(0, idx) - start))
            if out is None:  # allocated from the first band's output so dtype follows autocast
                out = emb.new_empty(flat.numel(), self.dim)
            out.index_copy_(0, idx, emb)  # the bands partition the tokens: every row is written once
        assert out is not None
        return (out * self.scale if self.scale != 1.0 else out).view(*tokens.shape, self.dim)
