"""Checkpoints of a training run: everything needed to continue it exactly, in one .npz file.

Contents (``cubn.save``'s format: arrays plus a JSON tree, read back with ``allow_pickle=False``)::

    {"format": "cubn-checkpoint", "version": 1,
     "epoch": epochs completed,
     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
     "scheduler": scheduler.state_dict() or None,
     "loaders": {"train": {"seed", "epoch"}, "val": ... or None},
     "random": cubn.random.get_state(),  (the generator behind initialization and Dropout)
     "random_ranks": [each rank's state] in a data-parallel run (``fit`` saves them), else None
     "history": the history so far,
     "meta": what the caller passed as meta (``cubn train``: the run's options), or None}
"""
from .. import distributed, random
from ..serialization import load, save

FORMAT, VERSION = "cubn-checkpoint", 1


def save_checkpoint(path, model, optimizer, scheduler=None, loaders=None, epoch=0, history=None, meta=None,
                    random_ranks=None):
    """Write a checkpoint to ``path`` atomically (a crash mid-write keeps the previous file).
    ``random_ranks``: every rank's ``cubn.random.get_state()``, for a data-parallel run to resume exactly."""
    loaders = loaders or {}
    save({"format": FORMAT, "version": VERSION, "epoch": int(epoch),
          "model": model.state_dict(), "optimizer": optimizer.state_dict(),
          "scheduler": None if scheduler is None else scheduler.state_dict(),
          "loaders": {name: None if loader is None else loader.state_dict() for name, loader in loaders.items()},
          "random": random.get_state(), "random_ranks": random_ranks, "history": history or {}, "meta": meta}, path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, loaders=None):
    """Restore a checkpoint into the given objects (each optional but the model) and the global random
    state; returns the whole saved dict (``epoch`` and ``history`` among it). To resume training,
    give the same kinds of objects as were saved (a run saved with a schedule needs one).

    Everything is checked before anything changes where the objects allow it: a checkpoint of
    another model (keys or shapes) raises ValueError from ``model.load_state_dict``.
    """
    state = load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cubn training checkpoint (format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"{path} is checkpoint version {state.get('version')!r}; this cubn reads version {VERSION}")
    if (optimizer is not None or scheduler is not None) and (scheduler is None) != (state["scheduler"] is None):
        raise ValueError(f"{path} was saved {'without' if state['scheduler'] is None else 'with'} an LR schedule, "
                         f"but {'one' if scheduler is not None else 'none'} was given to resume with")
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, loader in (loaders or {}).items():
        saved = state["loaders"].get(name)
        if loader is not None and saved is not None:
            loader.load_state_dict(saved)
    ranks = state.get("random_ranks")
    rank, size = distributed.rank(), distributed.world_size()
    random.set_state(ranks[rank] if ranks is not None and len(ranks) == size else state["random"])
    return state
