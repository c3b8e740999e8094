"""torch.distributed (torchrun/DDP) setup and the collective helpers the trainer uses."""
