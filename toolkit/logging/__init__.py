"""Logging: progress lines or bars, tensorboard, JSON metrics."""
