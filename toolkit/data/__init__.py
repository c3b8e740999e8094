"""Data: downloads, corpus recipes, binary datasets, batching and resumable iteration."""
