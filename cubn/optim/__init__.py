"""Optimizers (PyTorch's parameter groups and update rules) and learning-rate schedules."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer, weight_decay_groups
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "weight_decay_groups", "lr_scheduler"]
