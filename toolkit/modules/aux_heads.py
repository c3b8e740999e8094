"""Auxiliary prediction heads of a decoder LM (Al-Rfou et al. 2019, "T64"): intermediate-layer losses and
multiple targets, for any model that runs a stack of layers and predicts the next token.

The heads return named auxiliary terms, each a mean NLL per predicted token:

- ``layer_{l}_nll`` (l = 1..n-1): next-token loss of a prediction head on the output of layer l;
- ``target_{k}_nll`` (k = 2..m): loss of predicting the token k ahead from the final hidden states.

They never weight them: the config's weight schedules do (toolkit.aux_weights). A model asks `tapped_layers`
which layer outputs to hand over (only those of active terms), collects `layer_logits` of them as its layers
run, and gets the terms from `terms` at the end; a switched-off head is never called (no cost, no gradient).

k-ahead labels come from the window itself: input position t (which predicts target[:, t], the token at
t + 1) is labelled with target[:, t + k - 1] for k-ahead; the last k - 1 positions of a window have no such
label and are ignored. The data pipeline is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Collection, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ConfigError

IGNORE = -100  # label of positions without a k-ahead target (F.cross_entropy's ignore_index)

SharedHead = Callable[[Tensor], Tensor]  # the model's own final norm + output projection, as a function


class IntermediateHeads(StrEnum):
    """The prediction heads after layers 1..n-1."""

    separate = "separate"  # own LayerNorm + projection per layer
    shared = "shared"  # the model's final norm and output projection
    none = "none"  # no intermediate heads


@dataclass
class AuxHeadsConfig:
    """Auxiliary heads of a decoder LM (off by default: no heads, no parameters, no terms)."""

    intermediate_heads: IntermediateHeads = IntermediateHeads.none
    """Heads after layers 1..n-1 giving the terms layer_{l}_nll: separate (own LayerNorm + projection per
    layer), shared (the model's final norm and output projection) or none."""
    n_targets: int = 1
    """m: predict the tokens 1..m ahead from the final hidden states (1 = next token only, no target_{k}_nll
    terms; each k > 1 adds one projection)."""


def check_aux_heads(cfg: AuxHeadsConfig, adaptive_softmax: bool, prefix: str = "model.aux_heads.") -> None:
    """ConfigError naming the key: n_targets below 1, or heads on a model whose output is an adaptive softmax
    (the heads are plain projections onto the vocabulary; they need the model's plain output layer)."""
    if cfg.n_targets < 1:
        raise ConfigError(f"{prefix}n_targets must be >= 1, got {cfg.n_targets}")
    if adaptive_softmax and aux_heads_enabled(cfg):
        raise ConfigError(f"{prefix.rstrip('.')} need a plain output layer: set model.adaptive_softmax=false")


def aux_heads_enabled(cfg: AuxHeadsConfig) -> bool:
    """Whether the config asks for any head."""
    return cfg.intermediate_heads != IntermediateHeads.none or cfg.n_targets > 1


def build_aux_heads(cfg: AuxHeadsConfig, d_model: int, vocab_size: int, n_layers: int) -> Optional["AuxHeads"]:
    """The heads a decoder LM's `aux_heads` config asks for, or None (then the model is unchanged)."""
    if not aux_heads_enabled(cfg):
        return None
    return AuxHeads(d_model, vocab_size, n_layers, cfg.intermediate_heads, cfg.n_targets, "model.aux_heads.")


def k_ahead_labels(target: Tensor, ks: List[int]) -> Tensor:
    """Labels (K, B, T) for predicting k tokens ahead, k in `ks`, from next-token targets (B, T).

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


class AuxHeads(nn.Module):
    """The intermediate-layer heads (`layer_heads`, separate ones only) and the k-ahead heads (`target_heads`)
    of a model with `n_layers` layers of width `d_model` over `vocab_size` tokens."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        n_layers: int,
        intermediate_heads: IntermediateHeads | str,
        n_targets: int,
        config_prefix: str = "model.",
    ):
        super().__init__()
        if n_targets < 1:
            raise ConfigError(f"{config_prefix}n_targets must be >= 1, got {n_targets}")
        self.intermediate_heads = IntermediateHeads(intermediate_heads)
        self.n_targets = n_targets
        self.n_intermediate = n_layers - 1 if self.intermediate_heads != IntermediateHeads.none else 0
        # one small head per layer / extra target: a switched-off head is simply not called (no gradient)
        if self.intermediate_heads == IntermediateHeads.separate:
            self.layer_heads = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)) for _ in range(self.n_intermediate)
            )
        # extra targets k = 2..m, each a projection of the final hidden states
        self.target_heads = nn.ModuleList(nn.Linear(d_model, vocab_size) for _ in range(n_targets - 1))

    def term_names(self) -> List[str]:
        """Every auxiliary term these heads can return."""
        layers = [f"layer_{l}_nll" for l in range(1, self.n_intermediate + 1)]
        return layers + [f"target_{k}_nll" for k in range(2, self.n_targets + 1)]

    def term_parameters(self, name: str) -> List[nn.Parameter]:
        """The head that only term `name` uses (none for shared intermediate heads, and none for a term that
        is not these heads', e.g. the attention's span_l1)."""
        if name not in self.term_names():
            return []
        kind, number = name.split("_")[0], int(name.split("_")[1])
        if kind == "layer" and self.intermediate_heads == IntermediateHeads.separate:
            return list(self.layer_heads[number - 1].parameters())
        if kind == "target":
            return list(self.target_heads[number - 2].parameters())
        return []

    def tapped_layers(self, active_aux: Optional[Collection[str]]) -> List[int]:
        """The layers (1-based) whose outputs `layer_logits` must see: those of active layer terms.
        `active_aux` None means every term."""
        # membership tests only: no set built from the argument (torch.compile of torch 2.11 cannot clone one)
        wanted = self.term_names() if active_aux is None else active_aux
        return [l for l in range(1, self.n_intermediate + 1) if f"layer_{l}_nll" in wanted]

    def layer_logits(self, x: Tensor, layer: int, shared_head: SharedHead) -> Tensor:
        """Next-token logits from the output `x` of layer `layer` (1-based)."""
        if self.intermediate_heads == IntermediateHeads.shared:
            return shared_head(x)
        return self.layer_heads[layer - 1](x)

    def terms(
        self,
        layer_ids: List[int],
        layer_logits: List[Tensor],
        hidden: Tensor,
        target: Tensor,
        active_aux: Optional[Collection[str]],
    ) -> Dict[str, Tensor]:
        """The active terms: intermediate losses of the `layer_logits` collected at `layer_ids`, and the
        k-ahead losses of the final hidden states `hidden` (B, T, D) against next-token targets (B, T)."""
        aux: Dict[str, Tensor] = {}
        if layer_ids:
            losses = mean_nll(torch.stack(layer_logits), target.expand(len(layer_ids), *target.shape))
            aux.update({f"layer_{l}_nll": losses[j] for j, l in enumerate(layer_ids)})
        wanted = self.term_names() if active_aux is None else active_aux
        ks = [k for k in range(2, self.n_targets + 1) if f"target_{k}_nll" in wanted]
        if ks:
            k_logits = torch.stack([self.target_heads[k - 2](hidden) for k in ks])
            losses = mean_nll(k_logits, k_ahead_labels(target, ks))
            aux.update({f"target_{k}_nll": losses[j] for j, k in enumerate(ks)})
        return aux

    def parameter_count(self) -> int:
        """Parameters of the heads (dropped at inference)."""
        return sum(p.numel() for p in self.parameters())


def nest_aux_head_keys(state_dict: Dict[str, Tensor], prefix: str, *_: object) -> None:
    """load_state_dict pre-hook of a model with aux heads: a checkpoint's `layer_heads.*` / `target_heads.*`
    (the T64 model's own attributes before the heads became the `aux_heads` module) load as `aux_heads.*`."""
    for key in [k for k in state_dict if k.startswith((f"{prefix}layer_heads.", f"{prefix}target_heads."))]:
        state_dict[f"{prefix}aux_heads.{key[len(prefix) :]}"] = state_dict.pop(key)


def with_nested_aux_heads(model: nn.Module, weights: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A copy of the state dict `weights` with the heads' keys as `model` holds them (what load_state_dict
    does through the pre-hook), for the checks that compare a checkpoint's keys with the model's."""
    out = dict(weights)
    for name, module in model.named_modules():
        if isinstance(getattr(module, "aux_heads", None), AuxHeads):
            nest_aux_head_keys(out, f"{name}." if name else "")
    return out
