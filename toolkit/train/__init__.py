"""Training: the loop, optimizers and parameter groups, schedules, checkpoints, signals."""
