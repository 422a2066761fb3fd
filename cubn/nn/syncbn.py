"""SyncBatchNorm: BatchNorm whose training statistics are those of the whole batch across processes.

Each rank holds a slice of the global batch (slices may be uneven, or empty). Forward: every rank
computes the (count, mean, M2) of its slice per channel with two-pass statistics, one
``all_gather`` exchanges them, and every rank merges them in rank order with Chan's formula in
float64, so the global mean and variance are exact for any split and bitwise the same on every
rank (never a sum / sum-of-squares all-reduce, which loses the variance at a large offset).
Backward: one ``all_reduce`` of the per-channel (sum dy, sum dy*xhat) gives the global terms of
dx; dgamma and dbeta are this rank's own sums, as PyTorch's SyncBatchNorm returns them, for
data-parallel training to add up. Running statistics are updated from the merged statistics,
with BatchNorm's policies (momentum or decay, estimator, nonfinite, degenerate), the same on
every rank. Eval mode and frozen statistics communicate nothing.

Not yet: CUDA kernels for the local statistics and dx (this is array code, in float64), mask=.
"""
import numpy

from .. import backend, distributed
from ..tensor import Function
from . import functional as F
from .batchnorm import _BatchNorm


def chan_merge(parts):
    """Merge (count, mean, M2) per channel of every rank, rank order: parts is (ranks, 3, C) float64."""
    n = numpy.zeros(parts.shape[2])
    mean, m2 = numpy.zeros_like(n), numpy.zeros_like(n)
    for nb, mb, m2b in parts:
        total = n + nb
        w = numpy.divide(nb, total, out=numpy.zeros_like(n), where=total > 0)
        delta = mb - mean
        mean, m2, n = mean + delta * w, m2 + m2b + delta * delta * n * w, total
    return n, mean, m2


class SyncBatchNormTrain(Function):
    """y of this rank's slice x (N, C, S) with the global batch statistics; see the module docstring."""

    def forward(self, x, gamma, beta, eps):
        xp = backend.get_array_module(x)
        xa = x.astype(numpy.float64)
        count = x.shape[0] * x.shape[2]
        mean = xa.mean(axis=(0, 2)) if count else xp.zeros(x.shape[1])
        m2 = ((xa - mean[None, :, None]) ** 2).sum(axis=(0, 2))
        local = numpy.stack([numpy.full(x.shape[1], float(count)), backend.to_numpy(mean), backend.to_numpy(m2)])
        n, mean, m2 = chan_merge(distributed.all_gather(local))
        self.n = float(n[0])
        self.mean = mean
        self.var = m2 / self.n if self.n else numpy.zeros_like(m2)
        rstd = 1.0 / numpy.sqrt(self.var + eps)
        self.rstd, self.gamma = xp.asarray(rstd), None if gamma is None else gamma.astype(numpy.float64)
        self.xhat = (xa - xp.asarray(mean)[None, :, None]) * self.rstd[None, :, None]
        y = self.xhat if gamma is None else self.xhat * self.gamma[None, :, None]
        y = y if beta is None else y + beta.astype(numpy.float64)[None, :, None]
        self.dtype, self.acc = x.dtype, (numpy.float32 if gamma is None else gamma.dtype)
        return y.astype(x.dtype)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        g = grad.astype(numpy.float64)
        local = xp.stack([g.sum(axis=(0, 2)), (g * self.xhat).sum(axis=(0, 2))])   # (sum dy, sum dy*xhat)
        dbeta, dgamma = (xp.asarray(v) for v in distributed.all_reduce(backend.to_numpy(local)))
        scale = self.rstd if self.gamma is None else self.gamma * self.rstd
        if self.n:
            dx = scale[None, :, None] * (g - (dbeta[None, :, None] + self.xhat * dgamma[None, :, None]) / self.n)
        else:
            dx = xp.zeros_like(g)                      # every rank empty: no value to differentiate
        return dx.astype(self.dtype), local[1].astype(self.acc), local[0].astype(self.acc)


class SyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm(num_features, ...)``: BatchNorm's arguments and policies, statistics over every
    rank of ``cubn.distributed`` (one process: exactly BatchNorm). Takes (N, C, *) input, N >= 0."""

    ndims = (2, 3, 4, 5)
    supports_mask = False

    def _normalize(self, x, batch_stats, update, momentum, mask):
        if not batch_stats:
            return super()._normalize(x, batch_stats, update, momentum, mask)
        x, view, eps = F._channel_args(x, 2, dict(weight=self.weight, bias=self.bias), self.eps)
        y, fn = SyncBatchNormTrain.run(x.reshape(view), self.weight, self.bias, eps=eps)
        y = y.reshape(x.shape)
        who = self._who()
        if fn.n == 0:                                           # every rank empty: nothing to learn from
            return y, None
        action = F._degenerate_action(int(fn.n), self.degenerate, x, "value per channel (over all ranks)", who)
        if action == "running":
            return super()._normalize(x, False, False, 0.0, None)
        if not update or action == "no_update":
            return y, None
        var = fn.var * (fn.n / (fn.n - 1)) if self.running_var_estimator == "unbiased" else fn.var
        xp = backend.get_array_module(x.data)
        return y, F._fold_running([(self.running_mean, xp.asarray(fn.mean)), (self.running_var, xp.asarray(var))],
                                  momentum, self.nonfinite, who)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """A copy-free conversion: every BatchNorm1d/2d/3d in ``module`` (or ``module`` itself) becomes a
        SyncBatchNorm with the same arguments, parameters and buffers; returns the converted module.
        Batch Renorm, masked and Ghost BatchNorm are not converted (no synchronized form yet)."""
        if isinstance(module, _BatchNorm) and type(module) is not cls and type(module).__name__.startswith("BatchNorm"):
            sync = cls.__new__(cls)
            sync.__dict__.update(module.__dict__)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module
