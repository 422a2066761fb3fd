"""Training: ``fit`` (the loop, with a progress bar, evaluation and checkpoints), ``evaluate``, and
checkpoints that resume a run exactly (``save_checkpoint`` / ``load_checkpoint``)."""
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import HISTORY_KEYS, evaluate, fit, train_epoch

__all__ = ["HISTORY_KEYS", "evaluate", "fit", "load_checkpoint", "save_checkpoint", "train_epoch"]
