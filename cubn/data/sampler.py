"""DistributedSampler: which samples of a data set each rank of a data-parallel run reads.

PyTorch's rules, with NumPy's generator: each epoch the indices 0..n-1 are permuted (``shuffle``)
with ``numpy.random.default_rng([seed, epoch])``, the same permutation on every rank, and rank r
takes every ``num_replicas``-th index from position r. ``set_epoch(e)`` picks epoch e's permutation:
call it before each epoch (``cubn.train.fit`` does), or every epoch repeats the first order.

How the shards meet the data (``n`` samples, ``R`` ranks):

* ``drop_last=False`` (default, PyTorch): the permuted list is padded with its own first indices
  up to a multiple of R, so every rank gets ceil(n/R) samples; up to R-1 samples are seen twice
  per epoch.
* ``drop_last=True`` (PyTorch): the list is cut to a multiple of R; up to R-1 samples are skipped.
* ``pad=False`` (cubn's): neither. The shards are disjoint and together hold every sample once;
  their sizes differ by at most one. ``num_samples`` is still ceil(n/R), the same on every rank,
  and ``cubn.data.DataLoader`` counts its batches from it, so every rank runs the same number of
  steps (a rank's last batch may be one sample short, or empty) and no rank waits in a collective
  for a batch another rank does not have. With ``grad_reduction="sum"`` and SyncBatchNorm, an
  epoch is then exactly one epoch of the whole data set.

``state_dict()`` / ``load_state_dict()`` hold (seed, epoch), so a resumed run reads the same shards.
"""
import numpy

from .. import distributed


def _count(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class DistributedSampler:
    """``DistributedSampler(dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False, *, pad=True)``.

    dataset: anything with a length (or the number of samples itself); num_replicas and rank default
    to ``cubn.distributed.world_size()`` and ``rank()``. Iterating gives this rank's indices.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False, *, pad=True):
        n = dataset if isinstance(dataset, (int, numpy.integer)) and not isinstance(dataset, bool) else len(dataset)
        self.n = _count(n, "len(dataset)", 0)
        self.num_replicas = distributed.world_size() if num_replicas is None else _count(num_replicas, "num_replicas", 1)
        self.rank = distributed.rank() if rank is None else _count(rank, "rank", 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas = {self.num_replicas}), got {self.rank}")
        if drop_last and not pad:
            raise ValueError("drop_last=True and pad=False contradict each other: pad=False keeps every sample once")
        self.shuffle, self.drop_last, self.pad = bool(shuffle), bool(drop_last), bool(pad)
        self.seed, self.epoch = _count(seed, "seed", 0), 0
        R = self.num_replicas
        self.num_samples = self.n // R if self.drop_last else -(-self.n // R)
        self.total_size = self.num_samples * R if pad else self.n

    def set_epoch(self, epoch):
        self.epoch = _count(epoch, "epoch", 0)

    def indices(self):
        """This rank's indices for the current epoch, as an int64 array."""
        order = (numpy.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else numpy.arange(self.n))
        if self.total_size > self.n:                       # pad by repeating the first indices (PyTorch)
            reps = -(-self.total_size // max(self.n, 1))
            order = numpy.tile(order, reps)[:self.total_size]
        return order[:self.total_size][self.rank::self.num_replicas].astype(numpy.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return len(range(self.rank, self.total_size, self.num_replicas))

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
