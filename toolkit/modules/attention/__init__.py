"""Attention variants: the multi-head shell (base), MAE, and relative-position attention with adaptive span
and persistent memory."""
