"""Attention variants: the multi-head shell (base), and one file per registered variant: standard, MAE (mae,
its gate in mae_gate), relative-position attention with a fixed, adaptive or dynamic span and persistent
memory (span_attention, on relative and adaptive_span). `ATTENTIONS` (registry.py) holds them by name; importing
this package registers every one. terms.py: the auxiliary terms, upkeep and metrics a variant adds to its model."""

from toolkit.modules.attention import mae, span_attention, standard  # noqa: F401  (they register themselves)
from toolkit.modules.attention.registry import ATTENTIONS, AttentionFactory, Context, attention_factory

__all__ = ["ATTENTIONS", "AttentionFactory", "Context", "attention_factory"]
