"""`standard`: plain multi-head attention (base.py's MultiheadAttention), in every slot but the streamed cache."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.modules.attention.base import MultiheadAttention
from toolkit.modules.attention.registry import ATTENTIONS, AttentionFactory, AttentionVariant, BuildSpec, Context


@dataclass
class StandardAttentionConfig:
    """Plain multi-head attention has no options."""


def build_standard(cfg: StandardAttentionConfig, spec: BuildSpec) -> AttentionFactory:
    return MultiheadAttention


ATTENTIONS.register("standard", StandardAttentionConfig)(
    AttentionVariant(
        build_standard,
        unsupported={
            Context.streamed: "a streamed cache needs relative positions, which plain attention has not "
            "(use adaptive_span, with span: fixed for a plain window, or mae)",
        },
    )
)
