"""MAE: mixture of attentive experts (Peng et al., ACL 2020), a drop-in for MultiheadAttention.

Multi-head attention is a sum of per-head terms H_i (head i through its slice of W_O). Expert j is a subset
of h - k heads with output f_j = h/(h-k) * sum_{i in j} H_i, and MAE(x) = sum_j g_j(x) f_j(x). That equals
one per-head reweighting, w = (g @ M) * h/(h-k) with M the (experts, heads) membership matrix, so the heads are
computed once, scaled by w, concatenated and sent through ONE output projection whose bias is added once:
a uniform gate gives w = 1, i.e. plain multi-head attention.

Gate input is the layer input (`context`, else `query`). A non-causal gate (encoder self-attention) pools the
whole sequence: one gate per sequence. A causal gate (decoder self-attention, encoder-decoder attention,
whose layer input is the decoder state, and the LM) pools each prefix: one gate per position, and with a cache
the running sum/count live in the cache dict, so incremental decoding equals full recomputation.

The gate and the reweighting (`ExpertMixture`) mix into any attention whose heads are computed before one
output projection: `MAEAttention` on MultiheadAttention, `RelativeMAEAttention` on the relative attention of a
decoder LM with relative positions (the streamed configuration). Registered as the attention variant `mae` (every slot: encoder, decoder, cross, windowed LM,
streamed LM).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
from torch import Tensor, nn

from toolkit.errors import ConfigError, close_matches
from toolkit.modules.attention.base import Cache, MultiheadAttention
from toolkit.modules.attention.mae_gate import (
    EXPERT_KEY,
    GATE_PARAM_PATTERN,
    MAEGate,
    expert_membership,
    expert_usage,
    gate_entropy,
    masked_mean,
    prefix_mean,
)
from toolkit.modules.attention.registry import ATTENTIONS, AttentionFactory, AttentionVariant, BuildSpec, Context
from toolkit.modules.attention.span_attention import AdaptiveSpanConfig, CausalRelativeAttention

__all__ = [
    "MAEConfig",
    "MAEAttention",
    "RelativeMAEAttention",
    "ExpertMixture",
    "GATE_PARAM_PATTERN",
    "gate_entropy",
    "expert_usage",
    "set_mae_mode",
]

MODES = ("mixture", "random_expert", "argmax_expert")


@dataclass
class MAEConfig:
    """Options of one MAE attention module (the same for every MAE slot of a model)."""

    # heads dropped per expert, k: experts are all C(h, h-k) subsets (h=8: 1 -> MAE-7, 8 experts;
    # 2 -> MAE-6, 28 experts)
    drop: int = 1
    # hidden size of the gate MLP; None = d_model (the paper does not state it). A per-sequence gate is
    # negligible; a causal gate runs the MLP at every position, about one extra d_model x gate_hidden matmul
    # per token: in a bare 6-layer attention+FFN stack that is +11% step time at 512, +5% at 128 (measured
    # with scripts/bench_mae.py --causal); embeddings and the output softmax of a real model dilute it
    gate_hidden: Optional[int] = None
    # 'mixture': sum_j g_j f_j; 'random_expert': one uniformly drawn expert per sequence (kept in the cache
    # while decoding); 'argmax_expert': the expert with the largest gate, per gate row. The last two are the
    # paper's inference ablations; they apply whenever set (no gradient reaches the gate through them)
    mode: str = "mixture"
    # UNI-MAE: no gate parameters; in training each forward call (one batch) uses ONE expert drawn uniformly
    # for the whole batch (each module draws its own, from torch's global RNG); in evaluation the uniform
    # mixture, i.e. exactly plain multi-head attention
    uniform: bool = False
    # variant: in training, while the gate is frozen (its parameters have requires_grad=False, i.e. an F-step
    # of block coordinate descent), use one expert per gate row sampled from the gate instead of the mixture
    sample_expert_from_gate: bool = False


def validate_mode(mode: str, uniform: bool, prefix: str = "mae.") -> None:
    """Raise ConfigError for an unknown mode or one that needs a gate UNI-MAE does not have."""
    if mode not in MODES:
        raise ConfigError(f"{prefix}mode={mode!r} is not one of {', '.join(MODES)}{close_matches(mode, MODES)}")
    if uniform and mode == "argmax_expert":
        raise ConfigError(f"{prefix}mode='argmax_expert' needs a gate but {prefix}uniform=true has none")


def validate_mae_config(cfg: MAEConfig, n_heads: Optional[int], prefix: str = "mae.") -> None:
    """Raise ConfigError (one line naming the key, `prefix` + field) for values MAEAttention cannot build."""
    if n_heads is not None and not 1 <= cfg.drop < n_heads:
        raise ConfigError(f"{prefix}drop={cfg.drop} must be between 1 and n_heads-1={n_heads - 1}")
    validate_mode(cfg.mode, cfg.uniform, prefix)
    if cfg.gate_hidden is not None and cfg.gate_hidden < 1:
        raise ConfigError(f"{prefix}gate_hidden={cfg.gate_hidden} must be positive (or null for d_model)")
    if cfg.uniform and cfg.sample_expert_from_gate:
        raise ConfigError(f"{prefix}sample_expert_from_gate=true needs a gate but {prefix}uniform=true has none")


class ExpertMixture:
    """The gate and per-head weights of MAE, mixed into an attention class whose heads it reweights.

    `_init_experts` (called after the attention's own __init__, so parameter order is the attention's, then
    the gate's) adds the `membership` buffer and the `mae_gate`; `head_weights` turns the gate into per-head
    weights w = (g @ M) * h/(h-k), and `reweight` multiplies the (B, H, T, d_h) heads by them.
    """

    membership: Tensor
    mae_gate: Optional[MAEGate]

    def _init_experts(self, d_model: int, n_heads: int, cfg: Optional[MAEConfig], causal_gate: Optional[bool]) -> None:
        self.cfg = cfg if cfg is not None else MAEConfig()
        validate_mae_config(self.cfg, n_heads)
        self.causal_gate = causal_gate
        self.mode = self.cfg.mode  # per module, so set_mae_mode never mutates a shared config
        # not persistent: derived from the config, so plain-MHA checkpoints load into MAE and back
        self.register_buffer("membership", expert_membership(n_heads, self.cfg.drop), persistent=False)  # type: ignore[attr-defined]
        self.n_experts = self.membership.size(0)
        self.scale = n_heads / (n_heads - self.cfg.drop)
        hidden = self.cfg.gate_hidden or d_model
        self.mae_gate = None if self.cfg.uniform else MAEGate(d_model, hidden, self.n_experts)
        self.last_gate: Optional[Tensor] = None
        self.last_gate_padding: Optional[Tensor] = None
        self.last_expert: Optional[Tensor] = None

    @staticmethod
    def reweight(heads: Tensor, weights: Optional[Tensor]) -> Tensor:
        """Heads (B, H, T, d_h) times per-head weights (B, H) or (B, T, H); None leaves them as they are."""
        if weights is None:
            return heads
        # (B, H) -> (B, H, 1, 1); (B, T, H) -> (B, H, T, 1)
        weights = weights[:, :, None, None] if weights.dim() == 2 else weights.transpose(1, 2)[..., None]
        return heads * weights.to(heads.dtype)

    def head_weights(
        self, x: Tensor, padding_mask: Optional[Tensor], gate_causal: bool, cache: Optional[Cache]
    ) -> Optional[Tensor]:
        """Per-head weights (B, H) or (B, T, H); None means all ones (plain attention)."""
        self.last_expert = None
        if self.mae_gate is None:
            return self._uniform_weights(x.size(0), cache)
        if cache is not None and not gate_causal:
            raise ValueError("MAEAttention: incremental decoding (a cache) needs a causal gate (causal_gate=True)")
        pooled = prefix_mean(x, padding_mask, cache) if gate_causal else masked_mean(x, padding_mask)
        g = self.mae_gate(pooled)  # (B, E) or (B, T, E)
        self.last_gate, self.last_gate_padding = g.detach(), padding_mask if gate_causal else None
        mode = self.mode
        if mode == "argmax_expert":
            return self._expert_weights(g.argmax(dim=-1))
        if mode == "random_expert":
            return self._expert_weights(self._random_experts(x.size(0), x.device, cache))
        if self.training and self.cfg.sample_expert_from_gate and not self.gate_trainable():  # type: ignore[attr-defined]
            rows = g.detach().float().reshape(-1, self.n_experts)
            return self._expert_weights(torch.multinomial(rows, 1).view(g.shape[:-1]))
        return (g @ self.membership.to(g.dtype)) * self.scale

    def _uniform_weights(self, batch: int, cache: Optional[Cache]) -> Optional[Tensor]:
        self.last_gate = self.last_gate_padding = None
        if self.training:  # type: ignore[attr-defined]  # UNI-MAE training: one expert for the whole batch
            expert = torch.randint(self.n_experts, (), device=self.membership.device)
            return self._expert_weights(expert).expand(batch, -1)
        if self.mode == "random_expert":
            return self._expert_weights(self._random_experts(batch, self.membership.device, cache))
        return None  # the uniform mixture is exactly plain multi-head attention

    def _expert_weights(self, experts: Tensor) -> Tensor:
        """Head weights of single experts: indices (...) -> (..., H)."""
        self.last_expert = experts
        return self.membership[experts] * self.scale

    def _random_experts(self, batch: int, device: torch.device, cache: Optional[Cache]) -> Tensor:
        """One uniformly drawn expert per sequence, fixed for a whole decoding through the cache."""
        if cache is not None and EXPERT_KEY in cache:
            return cache[EXPERT_KEY]
        experts = torch.randint(self.n_experts, (batch,), device=device)
        if cache is not None:
            cache[EXPERT_KEY] = experts
        return experts

    def gate_trainable(self) -> bool:
        """False while block coordinate descent has frozen the gate (an F-step)."""
        return self.mae_gate is not None and any(p.requires_grad for p in self.mae_gate.parameters())

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, drop={self.cfg.drop}, mode={self.mode}, uniform={self.cfg.uniform}"


class MAEAttention(ExpertMixture, MultiheadAttention):
    """Multi-head attention as a gated mixture of (h-k)-head experts.

    Same constructor and forward as MultiheadAttention, plus:
    - cfg: MAEConfig (default MAE-7 style, drop=1).
    - causal_gate: True = running-mean (per-position) gate, False = one gate per sequence, None = causal
      when the call is `causal` or `static_kv` (static_kv marks encoder-decoder attention in a decoder).
    - forward(query_padding_mask=...): (B, T) padding of the gate input; defaults to key_padding_mask for
      self-attention (key None or the query itself), else None (cross-attention: with right padding a
      causal gate needs none, padded positions only affect themselves).
    After each forward, `last_gate` holds the detached gate probabilities ((B, E) or (B, T, E); None for
    UNI-MAE), `last_gate_padding` the padding mask aligned with them, and `last_expert` the indices of the
    single experts used ((B,), (B, T) or a 0-dim tensor for a whole batch; None for a mixture).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        cfg: Optional[MAEConfig] = None,
        causal_gate: Optional[bool] = None,
    ):
        super().__init__(d_model, n_heads, dropout, bias)
        self._init_experts(d_model, n_heads, cfg, causal_gate)

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        *,
        key_padding_mask: Optional[Tensor] = None,
        causal: bool = False,
        cache: Optional[Cache] = None,
        static_kv: bool = False,
        context: Optional[Tensor] = None,
        query_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """(B, T, D) -> (B, T, D); see MultiheadAttention.forward and the class docstring."""
        is_self = key is None or key is query
        key = query if key is None else key
        q, k, v = self.project_heads(query, key, cache, static_kv)
        heads = self.attend(q, k, v, key_padding_mask, causal)
        if query_padding_mask is None and is_self and key_padding_mask is not None:
            query_padding_mask = key_padding_mask[:, -query.size(1) :]  # queries are the last T keys
        gate_causal = self.causal_gate if self.causal_gate is not None else (causal or static_kv)
        x = context if context is not None else query
        heads = self.reweight(heads, self.head_weights(x, query_padding_mask, gate_causal, cache))
        return self.combine_heads(heads)


class RelativeMAEAttention(ExpertMixture, CausalRelativeAttention):
    """MAE on relative attention with the model's shared position keys (a decoder LM with relative positions):
    the gate reweights the relative attention's heads (context and persistent-memory reads together) before
    the one output projection.

    The gate is causal: at each position it pools the block's inputs up to that position (the same per-window
    prefix mean as MAE in a windowed LM; the carried cache is not pooled, so the gate of a position does not
    depend on how far back the span reaches)."""

    def __init__(
        self, d_model: int, n_heads: int, dropout: float, relative: AdaptiveSpanConfig, cfg: Optional[MAEConfig] = None
    ):
        # the span first, as for plain relative attention (same RNG order), then the projections, then the gate
        super().__init__(d_model, n_heads, dropout, relative, shared_keys=True)
        self._init_experts(d_model, n_heads, cfg, causal_gate=True)

    def combine_heads(self, heads: Tensor, h: Tensor) -> Tensor:
        return super().combine_heads(self.reweight(heads, self.head_weights(h, None, True, None)), h)


# the gate per slot: one per sequence in an encoder, per position (running prefix mean) wherever attention
# is causal (a decoder's cross-attention too: its gate input is the decoder state); None = from the call
GATE_CAUSAL = {Context.causal: None, Context.bidirectional: False, Context.decoder: True, Context.cross: True}


def build_mae(cfg: MAEConfig, spec: BuildSpec) -> AttentionFactory:
    if spec.context == Context.streamed:
        if spec.relative is None:
            raise ValueError("MAE in a streamed model needs the model's relative attention settings")
        return partial(RelativeMAEAttention, relative=spec.relative, cfg=cfg)
    return partial(MAEAttention, cfg=cfg, causal_gate=GATE_CAUSAL[spec.context])


ATTENTIONS.register("mae", MAEConfig)(AttentionVariant(build_mae, validate=validate_mae_config))


def set_mae_mode(model: nn.Module, mode: str) -> int:
    """Switch every MAE attention module in `model` to `mode` (e.g. an inference ablation); returns how many."""
    modules = [m for m in model.modules() if isinstance(m, ExpertMixture)]
    for m in modules:
        validate_mode(mode, m.cfg.uniform)
        m.mode = mode
    return len(modules)
