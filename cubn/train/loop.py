"""The training loop: ``fit`` trains for some epochs, evaluating and checkpointing after each.

One epoch is the loop every PyTorch user writes by hand::

    model.train()
    for x, y in train_loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()            # when the schedule counts batches

The loss and the number of correct predictions are summed on the device and read back only
every ``REFRESH`` batches (for the progress bar) and at the end of the epoch: reading a number
from the GPU waits for every queued kernel, and doing it each batch would stall the pipeline.

Data-parallel runs (several processes under ``cubn.distributed``, the model wrapped in
``nn.parallel.DistributedDataParallel``) call ``fit`` on every rank with the same arguments.
Each rank trains on its own shard (``DistributedSampler``; ``fit`` calls its ``set_epoch`` before
each epoch), the epoch's loss and accuracy are summed over all ranks (so the history holds the
numbers of the whole data set, the same on every rank), and only rank 0 shows the progress bar,
writes the checkpoint (with every rank's random state) and calls ``on_epoch_end``.
"""
import math
import time

import numpy

from .. import distributed, random
from ..nn import Module
from ..nn import functional as F
from ..optim import Optimizer
from ..tensor import no_grad
from .checkpoint import load_checkpoint, save_checkpoint

REFRESH = 10  # batches between progress-bar updates
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s")


class _Totals:
    """Per-epoch sums of loss * batch size and of correct predictions, kept on the device."""

    def __init__(self):
        self.loss, self.correct, self.count, self.has_accuracy = 0.0, 0, 0, True

    def add(self, loss, logits, target):
        n = len(target)
        self.loss = self.loss + loss.data * n
        self.count += n
        if logits.ndim == 2 and target.ndim == 1 and target.dtype.kind in "iu":
            self.correct = self.correct + (logits.data.argmax(axis=1) == target.data).sum()
        else:
            self.has_accuracy = False

    def means(self):
        """(mean loss, accuracy or None) over every rank, as Python floats: this reads from the device."""
        if distributed.world_size() > 1:
            sums = distributed.all_reduce(numpy.array([float(self.loss), float(self.correct), self.count,
                                                       self.has_accuracy]), "sum")
            self.loss, self.correct, self.count = sums[0], sums[1], int(sums[2])
            self.has_accuracy = bool(sums[3] == distributed.world_size())
        if self.count == 0:
            return math.nan, None
        accuracy = float(self.correct) / self.count if self.has_accuracy else None
        return float(self.loss) / self.count, accuracy


def evaluate(model, loader, loss_fn=None):
    """Mean loss and accuracy (None when the targets are not class indices) of ``model`` over
    ``loader``, in eval mode and without recording the tape; the model's mode is restored after."""
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    totals = _Totals()
    try:
        with no_grad():
            for x, y in loader:
                logits = model(x)
                totals.add(loss_fn(logits, y), logits, y)
    finally:
        model.train(was_training)
    return totals.means()


def _check_fit_args(model, train_loader, optimizer, epochs, scheduler_interval):
    if not isinstance(model, Module):
        raise TypeError(f"model must be a cubn.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a cubn.optim.Optimizer, got {type(optimizer).__name__}")
    if not hasattr(train_loader, "__iter__"):
        raise TypeError(f"train_loader must be iterable (a cubn.data.DataLoader), got {type(train_loader).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'batch', got {scheduler_interval!r}")


def _progress_bar(total, epoch, epochs, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # imported here: fit(progress=False) works without tqdm
    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)


def train_epoch(model, loader, optimizer, loss_fn, scheduler=None, bar=None):
    """One pass over ``loader`` in training mode; returns (mean loss, accuracy, samples, seconds).

    ``scheduler`` (if given) is stepped after every batch.
    """
    model.train()
    totals, start = _Totals(), time.perf_counter()
    for i, (x, y) in enumerate(loader):
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        totals.add(loss, logits, y)
        if bar is not None:
            bar.update(1)
            if (i + 1) % REFRESH == 0:
                _show(bar, totals, start)
    loss, accuracy = totals.means()
    seconds = time.perf_counter() - start
    if bar is not None:
        _show(bar, totals, start)
    return loss, accuracy, totals.count, seconds


def _show(bar, totals, start):
    loss, accuracy = totals.means()
    shown = {"loss": f"{loss:.4f}"}
    if accuracy is not None:
        shown["acc"] = f"{accuracy:.4f}"
    shown["img/s"] = f"{totals.count / max(time.perf_counter() - start, 1e-9):.0f}"
    bar.set_postfix(shown, refresh=True)


def fit(model, train_loader, optimizer, epochs, val_loader=None, scheduler=None, loss_fn=None,
        scheduler_interval="epoch", checkpoint=None, resume=None, progress=True, on_epoch_end=None, meta=None):
    """Train ``model`` for ``epochs`` epochs and return the history, a dict of lists (one entry per epoch):

    ``epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds, images_per_s`` (accuracy entries
    are None where the targets are not class indices; val entries None without ``val_loader``).

    loss_fn: ``(logits, target) -> scalar Tensor``, default ``cubn.nn.functional.cross_entropy``.
    scheduler: an LR schedule, stepped after every epoch, or after every batch with
        ``scheduler_interval="batch"`` (what OneCycleLR expects).
    checkpoint: a path; after every epoch the whole run (model, optimizer, scheduler, loaders,
        random state, history, epoch) is saved there atomically (``cubn.train.save_checkpoint``).
    resume: a checkpoint path to continue from: everything is restored and training goes on from
        the saved epoch up to ``epochs``, giving the same numbers as a run never interrupted
        (on the CPU bit for bit; on the GPU too for models without Dropout).
    progress: show a tqdm progress bar with loss, accuracy and images/s.
    on_epoch_end: optional ``callback(epoch, history)`` after each epoch's checkpoint (rank 0 only).
    meta: anything ``cubn.save`` stores (dicts, lists, numbers, strings), kept in every checkpoint
        under "meta" (``cubn train`` keeps the run's options there).
    """
    _check_fit_args(model, train_loader, optimizer, epochs, scheduler_interval)
    lead = distributed.rank() == 0           # the rank that reports and saves
    progress = progress and lead
    loss_fn = loss_fn or F.cross_entropy
    loaders = {"train": train_loader, "val": val_loader}
    history, first = {key: [] for key in HISTORY_KEYS}, 0
    if resume is not None:
        saved = load_checkpoint(resume, model, optimizer, scheduler, loaders)
        history, first = saved["history"], saved["epoch"]
    for epoch in range(first, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        bar = _progress_bar(len(train_loader), epoch + 1, epochs, progress)
        lr = optimizer.param_groups[0]["lr"]
        try:
            loss, accuracy, count, seconds = train_epoch(
                model, train_loader, optimizer, loss_fn, scheduler if scheduler_interval == "batch" else None, bar)
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            val_loss, val_accuracy = evaluate(model, val_loader, loss_fn) if val_loader is not None else (None, None)
            if bar is not None and val_loss is not None:
                bar.set_postfix_str(f"{bar.postfix}, val_loss={val_loss:.4f}"
                                    + (f", val_acc={val_accuracy:.4f}" if val_accuracy is not None else ""))
        finally:
            if bar is not None:
                bar.close()
        row = (epoch + 1, loss, accuracy, val_loss, val_accuracy, lr, seconds,
               count / seconds if seconds > 0 else math.nan)
        for key, value in zip(HISTORY_KEYS, row):
            history[key].append(value)
        if checkpoint is not None:
            ranks = distributed.all_gather_object(random.get_state()) if distributed.world_size() > 1 else None
            if lead:
                save_checkpoint(checkpoint, model, optimizer, scheduler, loaders, epoch + 1, history, meta, ranks)
            distributed.barrier()             # no rank runs ahead to a resume of a file still being written
        if on_epoch_end is not None and lead:
            on_epoch_end(epoch + 1, history)
    return history
