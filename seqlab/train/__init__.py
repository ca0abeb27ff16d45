"""Configs, the trainer, optimiser and param groups, checkpoints, metrics, sharding."""
