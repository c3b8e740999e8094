"""Reusable neural network building blocks (attention variants, memories, embeddings, softmaxes)."""
