"""DataLoader: mini-batches of an in-memory data set on one device, with seeded shuffling and augmentation.

The whole data set is moved to ``device`` once; every batch is then a slice (or, when shuffling, a
gather) of the arrays already there. Randomness comes from NumPy generators on the host, seeded with
``(seed, epoch)``: the permutation and the augmentation draws are tiny, and drawing them on the host
makes a run give the same batches on CPU and GPU.

Augmentations are callables ``t(x, rng) -> x`` applied to a whole image batch ``x`` (N, C, H, W)
on its own device, vectorized over the batch; ``rng`` is a ``numpy.random.Generator``. The random
ones split into ``draw(shape, rng)`` (host-side parameters) and ``apply(x, *params)``.
"""
import numpy

from .. import backend
from .. import random as cubn_random
from ..tensor import Tensor


class DataLoader:
    """Iterate over ``(Tensor x, Tensor y)`` batches of ``images`` and ``labels``.

    images, labels: arrays (NumPy, CuPy or Tensor) with the same first dimension.
    batch_size: samples per batch; the last batch is smaller unless ``drop_last``.
    shuffle: a new permutation each epoch, from ``numpy.random.default_rng([seed, epoch, 0])``.
    seed: int >= 0; None draws one from ``cubn.random`` (so ``cubn.manual_seed`` fixes it).
    device: 'cpu' or 'cuda' (None: where ``images`` are); the data is moved there once at construction.
    augment: None or a callable ``(x, rng) -> x`` (e.g. ``Compose([RandomCrop(32, 4),
        RandomHorizontalFlip()])``), given ``numpy.random.default_rng([seed, epoch, 1])``.
    sampler: None, or an iterable of sample indices read anew each epoch (``DistributedSampler``
        for data-parallel runs; exclusive with ``shuffle``, as in PyTorch). The number of batches
        comes from its ``num_samples`` when it has one (the same on every rank), else its length;
        batches past the sampler's last index are empty.

    Each ``iter()`` is one epoch and advances ``epoch``; ``state_dict()`` holds seed and epoch, so a
    loader given ``load_state_dict(saved)`` replays the same next epochs (order and augmentation).
    """

    def __init__(self, images, labels, batch_size, shuffle=False, drop_last=False, seed=None,
                 device="cpu", augment=None, sampler=None):
        images, labels = _as_array(images), _as_array(labels)
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if seed is None:
            seed = int(cubn_random.get_rng().integers(2**63))
        if not isinstance(seed, (int, numpy.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0 or None, got {seed!r}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be None or a callable (x, rng) -> x, got {augment!r}")
        if sampler is not None and (shuffle or not hasattr(sampler, "__iter__")):
            raise ValueError("sampler must be an iterable of indices, and is exclusive with shuffle=True "
                             f"(the sampler shuffles), got sampler={sampler!r}, shuffle={shuffle!r}")
        self.sampler = sampler
        self.device = backend.check_device(device) or backend.device_of(images)
        self.images = backend.to_device(images, self.device)
        self.labels = backend.to_device(labels, self.device)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed, self.epoch, self.augment = int(seed), 0, augment

    def __len__(self):
        n = len(self.labels) if self.sampler is None else getattr(self.sampler, "num_samples", None)
        n = len(self.sampler) if n is None else n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1  # advance now, even if the epoch is cut short
        return self._batches(epoch)

    def _batches(self, epoch):
        order = None
        if self.shuffle:
            order = numpy.random.default_rng([self.seed, epoch, 0]).permutation(len(self.labels))
        elif self.sampler is not None:
            order = numpy.fromiter(iter(self.sampler), numpy.int64)
            if len(order) and (order.min() < 0 or order.max() >= len(self.labels)):
                raise IndexError(f"the sampler gave indices outside [0, {len(self.labels)}): "
                                 f"{int(order.min())}..{int(order.max())}")
        if order is not None:
            order = backend.to_device(order, self.device)
        rng = numpy.random.default_rng([self.seed, epoch, 1])
        for i in range(len(self)):
            index = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is not None:
                index = order[index]
            x = self.images[index]
            if self.augment is not None:
                x = self.augment(x, rng)
            yield Tensor(x), Tensor(self.labels[index])

    def state_dict(self):
        state = {"seed": self.seed, "epoch": self.epoch}
        if hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state):
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])


def _as_array(a):
    if isinstance(a, Tensor):
        return a.data
    return a if backend.is_cupy(a) else numpy.asarray(a)


class Compose:
    """Apply ``transforms`` in order, all with the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x


class RandomCrop:
    """Crop each image to ``size`` (int or (h, w)) at a random place after ``padding`` zeros on each side."""

    def __init__(self, size, padding=0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if padding < 0 or min(self.size) < 1:
            raise ValueError(f"need size >= 1 and padding >= 0, got size={size!r}, padding={padding!r}")
        self.padding = padding

    def draw(self, shape, rng):
        """Top-left corners in the padded images: two int arrays of length N."""
        n, _, height, width = shape
        h, w, p = *self.size, self.padding
        if h > height + 2 * p or w > width + 2 * p:
            raise ValueError(f"crop size {self.size} exceeds the padded image size {(height + 2 * p, width + 2 * p)}")
        return rng.integers(0, height + 2 * p - h + 1, n), rng.integers(0, width + 2 * p - w + 1, n)

    def apply(self, x, top, left):
        xp = backend.get_array_module(x)
        p = self.padding
        padded = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        rows = xp.asarray(top)[:, None] + xp.arange(self.size[0])   # (N, h)
        cols = xp.asarray(left)[:, None] + xp.arange(self.size[1])  # (N, w)
        n, c = xp.arange(x.shape[0]), xp.arange(x.shape[1])
        return padded[n[:, None, None, None], c[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x, rng):
        return self.apply(x, *self.draw(x.shape, rng))


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = p

    def draw(self, shape, rng):
        """One bool per image: flip it or not."""
        return rng.random(shape[0]) < self.p

    def apply(self, x, flip):
        xp = backend.get_array_module(x)
        return xp.where(xp.asarray(flip)[:, None, None, None], x[..., ::-1], x)

    def __call__(self, x, rng):
        return self.apply(x, self.draw(x.shape, rng))


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel of floating-point (N, C, H, W) images."""

    def __init__(self, mean, std):
        self.mean, self.std = numpy.asarray(mean, numpy.float64), numpy.asarray(std, numpy.float64)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape or not (self.std > 0).all():
            raise ValueError(f"mean and std must be equal-length sequences with std > 0, got {mean!r}, {std!r}")

    def __call__(self, x, rng=None):
        if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize with {len(self.mean)} channels needs floating (N, {len(self.mean)}, H, W) "
                             f"images, got {x.dtype} {x.shape}")
        xp = backend.get_array_module(x)
        mean, std = (xp.asarray(v, dtype=x.dtype).reshape(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x - mean) / std
