"""Batch Normalization layers, and the running-statistics base they share with InstanceNorm and Batch Renorm.

Conventions (PyTorch's, stated once here):

* ``momentum`` (default 0.1): ``running = (1 - momentum) * running + momentum * batch``.
  ``momentum=None`` keeps a cumulative average instead: batch k is folded in
  with weight 1/k, so after k batches each running statistic is the plain
  mean of the k per-batch statistics (every batch weighs the same, whatever
  its size).
* ``running_var`` is updated with the unbiased batch variance, n/(n-1) with
  n = N * prod(spatial); the output is normalized with the biased one.
* ``eps`` (default 1e-5) is added to the variance inside the square root.
* In training, batch statistics are used and (if ``track_running_stats``) the
  running buffers updated; in eval the running statistics are used. With
  ``track_running_stats=False`` batch statistics are used in both modes.
* Training on one value per channel is a ValueError; eval mode accepts it.
  An empty batch returns an empty output and changes no statistic.
"""
import numpy

from . import functional as F
from .checks import check_count, check_eps, check_fraction, check_input
from .module import Module, Parameter


class _NormBase(Module):
    """Parameters (weight, bias) and running buffers shared by BatchNorm, InstanceNorm and Batch Renorm."""

    ndims = None                   # accepted input ranks
    spread_buffer = "running_var"  # Batch Renorm keeps running_std instead

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features = check_count(num_features, "num_features")
        self.eps = check_eps(eps)
        self.momentum = check_fraction(momentum, "momentum", allow_none=True)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(numpy.ones(C, numpy.float32))
            self.bias = Parameter(numpy.zeros(C, numpy.float32))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", numpy.zeros(C, numpy.float32))
            self.register_buffer(self.spread_buffer, numpy.ones(C, numpy.float32))
            self.register_buffer("num_batches_tracked", numpy.array(0, numpy.int64))
        else:
            for name in ("running_mean", self.spread_buffer, "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self):
        """running_mean <- 0, running spread <- 1, num_batches_tracked <- 0."""
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            getattr(self, self.spread_buffer).data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def _check(self, input):
        x = check_input(input, ndims=self.ndims, layer=type(self).__name__)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input with {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)}); channels are axis 1")
        return x

    def _updates_stats(self, x):
        return self.training and self.track_running_stats and x.size > 0 and F.stats_updates_enabled()

    def _momentum_factor(self):
        """The weight of this batch in the running update: momentum, or 1/k for the k-th batch when None."""
        if self.momentum is None:
            return 1.0 / (int(self.num_batches_tracked.data) + 1)
        return self.momentum

    def forward(self, input):
        x = self._check(input)
        updates = self._updates_stats(x)
        use_batch_stats = self.training or not self.track_running_stats
        running = (self.running_mean, getattr(self, self.spread_buffer))
        y = self._normalize(x, running if (updates or not use_batch_stats) else (None, None), use_batch_stats,
                            self._momentum_factor() if updates else 0.0)
        if updates:  # only after the functional call succeeded: a rejected batch is not counted
            self.num_batches_tracked.data[...] += 1
        return y

    def _normalize(self, x, running, use_batch_stats, momentum):
        """The functional call: ``running`` is (mean, spread) buffers or (None, None)."""
        raise NotImplementedError

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class _BatchNorm(_NormBase):
    def _normalize(self, x, running, use_batch_stats, momentum):
        return F.batch_norm(x, *running, self.weight, self.bias, training=use_batch_stats,
                            momentum=momentum, eps=self.eps)


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input; statistics per channel C."""
    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W) input; statistics per channel C."""
    ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W) input; statistics per channel C."""
    ndims = (5,)
