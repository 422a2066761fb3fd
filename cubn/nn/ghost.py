"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better").

With large batches, BatchNorm's batch statistics become almost noise-free, and that noise
was part of what regularized training. Ghost BatchNorm keeps the large batch for the
optimizer but normalizes it in consecutive "virtual" sub-batches of ``virtual_batch_size``
samples, each with its own mean and variance, as if the batch were several small ones.

* Training: the batch (N, C, H, W) is cut along N into chunks of ``virtual_batch_size``
  (the last one may be smaller); each is batch-normalized with its own statistics (the
  BatchNorm kernels, as BatchNorm2d without running buffers) and the outputs are joined
  again by a differentiable concatenation. The same gamma and beta serve every chunk.
* Running statistics are updated once per batch from the chunks' statistics, those the
  kernels computed, pooled with Chan's formula (``Moments.merge``, as SyncBatchNorm pools
  ranks): pooled mean and M2 over all chunks, running_var = M2 / (n - 1) with n the
  total count N * H * W (or M2 / n for ``running_var_estimator="biased"``). Pooling the
  chunks exactly gives the statistics of the whole batch, so the running statistics evolve
  as BatchNorm2d's would on the same batches: what the network sees at inference is the
  population, not one virtual batch.
* Eval: identical to BatchNorm2d (running statistics).

A chunk with one value per channel (a last chunk of one sample with H * W == 1) is a
ValueError in training, whatever ``degenerate`` says (that policy, like ``nonfinite``,
applies as in BatchNorm2d to a batch that fits in one virtual batch; ``nonfinite`` also
guards the pooled update). ``mask=`` is not supported.
"""
import numpy

from .. import backend
from ..ops.norm import BatchNormTrain, Moments
from ..tensor import Function
from . import functional as F
from .batchnorm import BatchNorm2d
from .bn_tools import unbiased_running_var
from .checks import UNSET, check_count, check_eps, check_input, check_vector


class Concat(Function):
    """Join arrays along ``axis`` (``numpy.concatenate``); backward cuts the gradient into the same pieces."""

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return backend.get_array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, grad):
        pieces, start = [], 0
        for size, needed in zip(self.sizes, self.needs_input_grad):
            index = [slice(None)] * grad.ndim
            index[self.axis] = slice(start, start + size)
            pieces.append(grad[tuple(index)] if needed else None)
            start += size
        return tuple(pieces)


def concat(tensors, axis=0):
    """Differentiable concatenation of Tensors along ``axis``."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    return Concat.apply(*tensors, axis=axis)


def ghost_batch_norm(input, virtual_batch_size, weight=None, bias=None, eps=1e-5):
    """Training-mode Ghost BatchNorm of (N, C, *spatial) input: each chunk of ``virtual_batch_size``
    consecutive samples normalized with its own batch statistics. Pure: touches no running statistic."""
    x = check_input(input, min_ndim=2)
    v = check_count(virtual_batch_size, "virtual_batch_size")
    if x.shape[0] <= v or x.size == 0:
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
    return _virtual_batches(x, v, weight, bias, eps)[0]


def _virtual_batches(x, v, weight, bias, eps):
    """(y, pooled Moments): each chunk of ``v`` samples through the BatchNorm kernels with its own statistics,
    and the chunks' (count, mean, M2 = var*count) merged with Chan's formula: the whole batch's moments.
    x holds more than ``v`` samples."""
    for name, p in (("weight", weight), ("bias", bias)):
        check_vector(p, x.shape[1], name, x)
    eps, N = check_eps(eps), x.shape[0]
    if (N - (N - 1) // v * v) * (x.size // (N * x.shape[1])) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(x.shape)}: with virtual_batch_size={v} the last virtual batch holds one sample "
                         f"of one value per channel")
    pieces, total = [], None
    for start in range(0, x.shape[0], v):
        chunk = x[start:start + v]
        y, fn = BatchNormTrain.run(chunk, weight, bias, view=F._channel_view(chunk), eps=eps)
        count = chunk.shape[0] * (x.size // (x.shape[0] * x.shape[1]))
        mean, var = (a.astype(numpy.float64) for a in (fn.mean, fn.var))
        moments = Moments(count, mean, var * count)
        pieces.append(y)
        total = moments if total is None else total.merge(moments)
    return concat(pieces, axis=0), total


class GhostBatchNorm2d(BatchNorm2d):
    """BatchNorm2d that normalizes training batches in virtual sub-batches; see the module docstring.

    ``GhostBatchNorm2d(num_features, virtual_batch_size, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, **options)``; the other arguments, and the keyword-only options
    (``decay``, ``running_var_estimator``, ``nonfinite``, ``degenerate``), mean what they mean
    for BatchNorm2d. With ``virtual_batch_size >= N`` it is exactly BatchNorm2d.
    """

    supports_mask = False  # masked statistics are BatchNorm's; not combined with virtual batches here

    def __init__(self, num_features, virtual_batch_size, eps=1e-5, momentum=UNSET, affine=True,
                 track_running_stats=True, **options):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, **options)
        self.virtual_batch_size = check_count(virtual_batch_size, "virtual_batch_size")

    def _normalize(self, x, batch_stats, update, momentum, mask):
        """The base class's hook: returns (y, outcome) where outcome says whether the running stats moved.

        A batch of at most ``virtual_batch_size`` samples is one virtual batch: BatchNorm2d's own
        path (with its ``nonfinite``/``degenerate`` policies) handles it, as it does eval.
        """
        if not batch_stats or x.shape[0] <= self.virtual_batch_size or x.size == 0:
            return super()._normalize(x, batch_stats, update, momentum, mask)
        y, total = _virtual_batches(x, self.virtual_batch_size, self.weight, self.bias, self.eps)
        if not update:
            return y, None
        pairs = [(self.running_mean, total.mean), (self.running_var, total.variance(unbiased_running_var(self)))]
        return y, F._fold_running(pairs, momentum, self.nonfinite, self._who())

    def extra_repr(self):
        return f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, " + \
            super().extra_repr().split(", ", 1)[1]


__all__ = ["Concat", "GhostBatchNorm2d", "concat", "ghost_batch_norm"]
