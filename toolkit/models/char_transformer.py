"""T64-style deep character transformer (Al-Rfou et al. 2019) with its auxiliary prediction losses.

A causal transformer over fixed windows. Besides the main output (the final layer's next-character logits
at every position, the "multiple positions" loss the criterion computes), it returns named auxiliary terms,
each a mean NLL per predicted character:

- ``layer_{l}_nll`` (l = 1..n-1): next-character loss of a prediction head after layer l;
- ``target_{k}_nll`` (k = 2..m): loss of predicting the character k ahead from the final layer.

The model never weights them: schedules in the config's ``aux_weights`` do (toolkit.aux_weights). Only the
terms in ``active_aux`` (non-zero weight at this step) are computed, so a switched-off loss costs nothing
and sends no gradient into its head.

k-ahead labels come from the window itself: input position t (which predicts target[:, t], the character
at t + 1) is labelled with target[:, t + k - 1] for k-ahead; the last k - 1 positions of a window have no
such label and are ignored. The data pipeline is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError
from toolkit.models.base import ToolkitModel
from toolkit.models.init_schemes import DEFAULT_SCHEME, InitTargets, apply_init, check_scheme
from toolkit.modules.memory_placement import MemoryConfigMixin
from toolkit.modules.transformer_layer import Activation, TransformerLayer
from toolkit.registry import MODELS

IGNORE = -100  # label of positions without a k-ahead target (F.cross_entropy's ignore_index)


class CharPositions(StrEnum):
    """Where learned positions are added."""

    every_layer = "every_layer"  # at the input of every layer (T64)
    first_layer = "first_layer"  # at the input of the first layer only


class IntermediateHeads(StrEnum):
    """The prediction heads after layers 1..n-1."""

    separate = "separate"  # own LayerNorm + projection per layer
    shared = "shared"  # the final LayerNorm + output projection
    none = "none"  # no intermediate heads


@dataclass
class CharTransformerConfig(MemoryConfigMixin):
    name: str = "char_transformer"
    n_layers: int = 12  # number of Transformer layers (n)
    d_model: int = 512  # model width
    n_heads: int = 8  # attention heads
    d_ff: int = 2048  # feed-forward hidden size
    dropout: float = 0.55  # residual and embedding dropout
    attention_dropout: float = 0.0  # dropout on attention probabilities
    activation_dropout: float = 0.0  # dropout after the FFN activation
    activation: Activation = Activation.relu  # relu or gelu
    max_positions: int = 512  # rows of each learned position table (>= the window length)
    positions: CharPositions = CharPositions.every_layer  # learned positions added at every layer or the first only
    intermediate_heads: IntermediateHeads = IntermediateHeads.separate  # heads after layers 1..n-1 (IntermediateHeads)
    n_targets: int = 2  # m: predict the characters 1..m ahead (1 = next character only, no target_k terms)
    tie_embeddings: bool = False  # share the input embedding and the final output projection
    vocab_size: int = 0  # 0 = from the task's vocabulary (or the preset when no data is prepared)
    init: str = DEFAULT_SCHEME  # parameter initialisation: 'gpt2' (fast-learning) or 'fairseq' (docs/init.md)
    scale_embedding: bool = True  # multiply the token embedding by sqrt(d_model) (fairseq); false learns
    #                               faster (the positions keep up with the tokens; docs/init.md)


def k_ahead_labels(target: Tensor, ks: List[int]) -> Tensor:
    """Labels (K, B, T) for predicting k characters ahead, k in `ks`, from next-character targets (B, T).

    Position t of a window predicts target[:, t] as 1-ahead, so its k-ahead label is target[:, t + k - 1];
    positions t > T - k have none and get IGNORE.
    """
    t = target.size(1)
    padded = F.pad(target, (0, max(ks) - 1), value=IGNORE)
    shifts = torch.tensor(ks, device=target.device)[:, None] - 1
    index = torch.arange(t, device=target.device)[None, :] + shifts  # (K, T)
    return padded[:, index].permute(1, 0, 2)  # (B, K, T) -> (K, B, T)


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row mean NLL over labelled positions: logits (K, ..., V), labels (K, ...) -> (K,)."""
    k, v = logits.size(0), logits.size(-1)
    nll = F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    nll = nll.view(k, -1)
    counts = (labels.reshape(k, -1) != IGNORE).sum(1).clamp_min(1)
    return nll.sum(1) / counts


@MODELS.register("char_transformer", CharTransformerConfig)
class CharTransformer(ToolkitModel):
    """Embedding -> n causal pre-LN layers (positions added before each) -> LayerNorm -> next-char logits."""

    def __init__(self, cfg: CharTransformerConfig, vocab_size: int):
        super().__init__()
        if cfg.n_targets < 1:
            raise ConfigError(f"model.n_targets must be >= 1, got {cfg.n_targets}")
        check_scheme(cfg.init)
        self.cfg, self.vocab_size = cfg, vocab_size
        d, n = cfg.d_model, cfg.n_layers
        self.embed = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.embed.weight, mean=0.0, std=d**-0.5)
        self.embed_scale = math.sqrt(d) if cfg.scale_embedding else 1.0
        n_tables = n if cfg.positions == "every_layer" else 1
        self.positions = nn.Parameter(torch.randn(n_tables, cfg.max_positions, d) * d**-0.5)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                d,
                cfg.n_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                pre_ln=True,  # pre-LN: the residual stream of every layer can feed a prediction head
                activation=cfg.activation,
            )
            for _ in range(n)
        )
        self.final_norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, vocab_size)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight
        # one small head per layer / extra target: a switched-off head is simply not called (no gradient)
        self.n_intermediate = n - 1 if cfg.intermediate_heads != "none" else 0
        if cfg.intermediate_heads == "separate":
            self.layer_heads = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d), nn.Linear(d, vocab_size)) for _ in range(self.n_intermediate)
            )
        # extra targets k = 2..m, each a projection of the final normalised states
        self.target_heads = nn.ModuleList(nn.Linear(d, vocab_size) for _ in range(cfg.n_targets - 1))
        apply_init(self, cfg.init, InitTargets([(self.embed, self.embed_scale)], [self.positions]))

    @classmethod
    def build(cls, cfg: Any, task: Any) -> "CharTransformer":
        return cls(cfg, cfg.vocab_size or task.vocab_size)

    def aux_term_names(self) -> List[str]:
        """Every auxiliary term this model can return (the criterion says which are active)."""
        layers = [f"layer_{l}_nll" for l in range(1, self.n_intermediate + 1)]
        return layers + [f"target_{k}_nll" for k in range(2, self.cfg.n_targets + 1)]

    def aux_term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (none for shared intermediate heads)."""
        kind, number = name.split("_")[0], int(name.split("_")[1])
        if kind == "layer" and self.cfg.intermediate_heads == "separate":
            return list(self.layer_heads[number - 1].parameters())
        if kind == "target":
            return list(self.target_heads[number - 2].parameters())
        return []

    def forward(
        self, tokens: Tensor, target: Optional[Tensor] = None, active_aux: Optional[set[str]] = None
    ) -> tuple[Tensor, Dict[str, Tensor]]:
        """Final-layer logits (B, T, V) and the active auxiliary terms (none without `target`).

        `active_aux` None means every term (when `target` is given).
        """
        t = tokens.size(1)
        if t > self.cfg.max_positions:
            raise ConfigError(f"input of {t} characters is longer than model.max_positions={self.cfg.max_positions}")
        # membership tests only: no set built from the argument (torch.compile of torch 2.11 cannot clone one)
        wanted = self.aux_term_names() if active_aux is None else active_aux
        layer_ids = [l for l in range(1, self.n_intermediate + 1) if f"layer_{l}_nll" in wanted]
        keep = set(layer_ids)
        x = self.dropout(self.embed(tokens) * self.embed_scale)
        layer_logits: List[Tensor] = []  # logits of the active intermediate heads, computed as we go
        for i, layer in enumerate(self.layers):
            if i < self.positions.size(0):
                x = x + self.positions[i, :t]
            x = layer(x, causal=True)
            if target is not None and i + 1 in keep:
                layer_logits.append(self._layer_head(x, i + 1))
        hidden = self.final_norm(x)
        logits = self.output(hidden)
        aux: Dict[str, Tensor] = {}
        if target is not None:
            if layer_ids:
                losses = mean_nll(torch.stack(layer_logits), target.expand(len(layer_ids), *target.shape))
                aux.update({f"layer_{l}_nll": losses[j] for j, l in enumerate(layer_ids)})
            ks = [k for k in range(2, self.cfg.n_targets + 1) if f"target_{k}_nll" in wanted]
            if ks:
                k_logits = torch.stack([self.target_heads[k - 2](hidden) for k in ks])
                losses = mean_nll(k_logits, k_ahead_labels(target, ks))
                aux.update({f"target_{k}_nll": losses[j] for j, k in enumerate(ks)})
        return logits, aux

    def _layer_head(self, x: Tensor, layer: int) -> Tensor:
        """Next-character logits from the output of layer `layer` (1-based)."""
        if self.cfg.intermediate_heads == "shared":
            return self.output(self.final_norm(x))
        return self.layer_heads[layer - 1](x)

    def parameter_breakdown(self) -> Dict[str, int]:
        """Parameters of the auxiliary heads (dropped at inference) and of the position tables."""
        heads = sum(
            p.numel() for name, p in self.named_parameters() if name.startswith(("layer_heads.", "target_heads."))
        )
        return {"aux_head_parameters": heads, "position_parameters": self.positions.numel()}
