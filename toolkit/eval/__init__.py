"""Evaluation: LM scoring, beam search, BLEU."""
