"""toolkit: a fairseq-style training toolkit for reproducing Transformer papers."""

__version__ = "0.1.0"
