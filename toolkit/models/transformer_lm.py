"""Decoder-only causal Transformer language model (GPT-style), for characters or words."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from toolkit.modules.positional import build_positions
from toolkit.modules.transformer_layer import TransformerLayer
from toolkit.registry import MODELS


@dataclass
class TransformerLMConfig:
    name: str = "transformer_lm"
    n_layers: int = 2  # number of Transformer layers
    d_model: int = 256  # model width
    n_heads: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward hidden size
    dropout: float = 0.1  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: str = "relu"  # 'relu' or 'gelu'
    pre_ln: bool = True  # LayerNorm before each sublayer (True) or after (False, Vaswani et al.)
    positions: str = "learned"  # 'learned' or 'sinusoidal'
    max_positions: int = 1024  # longest input the position table covers
    tie_embeddings: bool = True  # share the input embedding and the output projection
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)


@MODELS.register("transformer_lm", TransformerLMConfig)
class TransformerLM(nn.Module):
    """Token embedding + positions -> causal layers -> (final LayerNorm) -> vocabulary logits."""

    def __init__(self, cfg: TransformerLMConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, mean=0.0, std=cfg.d_model**-0.5)
        self.embed_scale = math.sqrt(cfg.d_model)
        self.positions = build_positions(cfg.positions, cfg.max_positions, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                pre_ln=cfg.pre_ln,
                activation=cfg.activation,
            )
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_ln else nn.Identity()
        self.output = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "TransformerLM":
        return cls(cfg, cfg.vocab_size or task.vocab_size)

    def hidden(self, tokens: Tensor) -> Tensor:
        """Final-layer states (B, T, D) for tokens (B, T)."""
        positions = torch.arange(tokens.size(1), device=tokens.device)
        x = self.dropout(self.embed(tokens) * self.embed_scale + self.positions(positions))
        for layer in self.layers:
            x = layer(x, causal=True)
        return self.final_norm(x)

    def forward(self, tokens: Tensor, target: Optional[Tensor] = None) -> tuple[Tensor, Dict[str, Tensor]]:
        """Logits (B, T, V) and named auxiliary terms (none for this model)."""
        return self.output(self.hidden(tokens)), {}
