"""One Transformer layer (self-attention, optional encoder-decoder attention, FFN), pre- or post-LN.

Used by the encoder, the decoder and the decoder-only LMs. The attention is injected (a factory from the
ATTENTIONS registry, toolkit.modules.attention), so variants drop in without touching the layer.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.modules.attention.base import Cache, MultiheadAttention
from toolkit.modules.attention.registry import AttentionFactory
from toolkit.modules.attention.relative import StreamInputs


class Activation(StrEnum):
    """The FFN's nonlinearity."""

    relu = "relu"
    gelu = "gelu"


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> activation -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.activation = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.activation_dropout = activation_dropout

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """`padding_mask` is accepted like a product-key memory's and not needed: each position is on its own."""
        h = F.dropout(self.activation(self.fc1(x)), self.activation_dropout, self.training)
        return self.fc2(h)


class TransformerLayer(nn.Module):
    """Residual sublayers with LayerNorm before (pre-LN) or after (post-LN) each."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        pre_ln: bool = False,
        cross_attention: bool = False,
        activation: str = "relu",
        self_attention_cls: AttentionFactory = MultiheadAttention,
        cross_attention_cls: AttentionFactory = MultiheadAttention,
        ffn: Optional[nn.Module] = None,
        use_ffn: bool = True,
    ):
        """`ffn`: the position-wise sublayer (default: a FeedForward of d_ff); `use_ffn=False`: none at all
        (attention-only layers, e.g. all-attention's, whose persistent memory takes the FFN's place)."""
        super().__init__()
        self.pre_ln, self.dropout = pre_ln, dropout
        self.self_attn = self_attention_cls(d_model, n_heads, attention_dropout)
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = cross_attention_cls(d_model, n_heads, attention_dropout) if cross_attention else None
        self.cross_attn_norm = nn.LayerNorm(d_model) if cross_attention else None
        self.ffn: Optional[nn.Module] = None
        self.ffn_norm: Optional[nn.LayerNorm] = None
        if use_ffn:
            self.ffn = ffn if ffn is not None else FeedForward(d_model, d_ff, activation_dropout, activation)
            self.ffn_norm = nn.LayerNorm(d_model)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_ln:
            return x + F.dropout(sublayer(norm(x)), self.dropout, self.training)
        return norm(x + F.dropout(sublayer(x), self.dropout, self.training))

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Optional[Tensor] = None,
        causal: bool = False,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        self_cache: Optional[Cache] = None,
        cross_cache: Optional[Cache] = None,
        ffn_padding_mask: Optional[Tensor] = None,
        stream: Optional[StreamInputs] = None,
    ) -> Tensor:
        """x: (B, T, D). padding_mask: (B, T), True at padding. Caches enable incremental decoding.

        `ffn_padding_mask` marks x's padding for the position-wise sublayer only (default: `padding_mask`): a
        causal decoder's self-attention needs no mask for right padding, but a product-key memory in place of
        the FFN must keep pad rows out of its BatchNorm statistics.

        `stream` (relative self-attention only) carries the layer's cached earlier inputs and the position keys
        the model's layers share."""
        extra = {"stream": stream} if stream is not None else {}
        x = self._residual(
            x,
            self.self_attn_norm,
            lambda h: self.self_attn(
                h, key_padding_mask=padding_mask, causal=causal, cache=self_cache, context=h, **extra
            ),
        )
        if self.cross_attn is not None and encoder_out is not None:
            x = self._residual(
                x,
                self.cross_attn_norm,
                lambda h: self.cross_attn(
                    h,
                    encoder_out,
                    key_padding_mask=encoder_padding_mask,
                    cache=cross_cache,
                    static_kv=True,
                    context=h,
                ),
            )
        if self.ffn is None or self.ffn_norm is None:
            return x
        ffn, ffn_mask = self.ffn, ffn_padding_mask if ffn_padding_mask is not None else padding_mask
        return self._residual(x, self.ffn_norm, lambda h: ffn(h, ffn_mask))
