"""Normalization Functions: the autodiff face of the kernel API.

Each Function reshapes the user's tensor to the view its kernels take (see
``cubn/ref/__init__.py``), picks the kernel module for the array's device
(``kernel_module``), and keeps what backward needs. They are pure: batch
statistics are left on the Function instance (``fn.mean``, ``fn.var``) for
the caller to fold into running buffers; nothing here mutates state.

An empty input (a zero-sized batch) gives an empty output of the same shape,
zero gradients for gamma and beta, and no statistics (``fn.mean is None``).
"""
import importlib
import os

import numpy

from .. import backend, distributed, jit
from ..ref.common import acc_dtype
from ..tensor import Function


def kernel_module(family, x):
    """The kernel module for ``family`` and the array x: ``cubn.cuda.<family>`` for CuPy arrays,
    ``cubn.jit.<family>`` (compiled CPU loops, when Numba is installed) for NumPy arrays, and
    ``cubn.ref.<family>``, the NumPy twin, where neither exists.

    ``CUBN_KERNELS`` in the environment (read at each call) changes that:
    ``ref`` sends every array through the NumPy twins (for CuPy arrays a kernel-free GPU
    baseline, and a way to rule kernels or loops out when debugging); ``emulate`` sends NumPy
    arrays through ``cubn.cuda``, whose kernels then run on the CPU emulator (``cubn.emulate``).
    """
    mode = os.environ.get("CUBN_KERNELS")
    if mode == "emulate":
        candidate = None if backend.is_cupy(x) else "cuda"
    elif mode == "ref":
        candidate = None
    else:
        candidate = "cuda" if backend.is_cupy(x) else "jit" if jit.available() else None
    if candidate:
        name = f"cubn.{candidate}.{family}"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, "cubn." + candidate):
                raise
    return importlib.import_module("cubn.ref." + family)


def cpu_norm_path():
    """Which implementation the norms take for NumPy arrays now: "loops" (cubn/jit) or "twins" (cubn/ref),
    or "emulate" under CUBN_KERNELS=emulate (the CUDA kernels on the CPU emulator)."""
    package = kernel_module("batchnorm", numpy.zeros((1, 1, 2), numpy.float32)).__name__.split(".")[1]
    return {"jit": "loops", "ref": "twins", "cuda": "emulate"}[package]


def _flat(p, dtype):
    """A parameter as the contiguous 1-D array of the accumulation dtype the kernels take."""
    if p is None:
        return None
    xp = backend.get_array_module(p)
    return xp.ascontiguousarray(p.reshape(-1), dtype=dtype)


class _NormFunction(Function):
    """Shared plumbing: ``view`` is the kernel-API shape of x; gamma/beta may be None.

    Subclasses implement ``compute(xv, gamma, beta, **constants) -> yv`` and
    ``grads(dyv) -> (dxv, dgamma, dbeta)`` on views and flat parameters.
    """

    family = None

    def forward(self, x, gamma=None, beta=None, *, view, **constants):
        xp = backend.get_array_module(x)
        self.x_shape = x.shape
        self.param_shapes = (None if gamma is None else gamma.shape, None if beta is None else beta.shape)
        self.mean = self.var = None
        self.empty = x.size == 0
        if self.empty:
            self.zeros = [None if p is None else xp.zeros_like(p) for p in (gamma, beta)]
            return x.copy()
        self.k = kernel_module(self.family, x)
        dtype = acc_dtype(x.dtype)
        self.xv = xp.ascontiguousarray(x.reshape(view))
        self.gamma = _flat(gamma, dtype)
        y = self.compute(self.xv, self.gamma, _flat(beta, dtype), **constants)
        return y.reshape(self.x_shape)

    def backward(self, grad):
        if self.empty:
            return (grad.copy(), *self.zeros)
        xp = backend.get_array_module(grad)
        dx, dgamma, dbeta = self.grads(xp.ascontiguousarray(grad.reshape(self.xv.shape)))
        dx = dx.reshape(self.x_shape) if self.needs_input_grad[0] else None
        out = [dx]
        for i, (g, shape) in enumerate(zip((dgamma, dbeta), self.param_shapes), start=1):
            out.append(g.reshape(shape) if i < len(self.needs_input_grad) and self.needs_input_grad[i] else None)
        return tuple(out)


class BatchNormTrain(_NormFunction):
    """y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta with batch statistics per channel.

    view: (N, C, S). Leaves ``mean`` and biased ``var`` (C,) on the instance.
    """

    family = "batchnorm"

    def compute(self, xv, gamma, beta, eps):
        y, self.mean, self.var, self.rstd = self.k.batchnorm_forward(xv, gamma, beta, eps)
        return y

    def grads(self, dyv):
        return self.k.batchnorm_backward(dyv, self.xv, self.gamma, self.mean, self.rstd)


class BatchNormEval(_NormFunction):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta with given (running) statistics, constants here."""

    family = "batchnorm"

    def compute(self, xv, gamma, beta, mean, var, eps):
        dtype = acc_dtype(xv.dtype)
        self.stats = (_flat(mean, dtype), _flat(var, dtype), eps)
        return self.k.batchnorm_inference(xv, gamma, beta, *self.stats)

    def grads(self, dyv):
        return self.k.batchnorm_inference_backward(dyv, self.xv, self.gamma, *self.stats)


class BatchRenormTrain(_NormFunction):
    """Batch Renormalization in training: BN's output corrected by r and d (constants in backward).

    view: (N, C, S). Leaves ``mean``, biased ``var``, ``r`` and ``d`` (C,) on the instance.
    """

    family = "batchrenorm"

    def compute(self, xv, gamma, beta, running_mean, running_std, rmax, dmax, eps):
        dtype = acc_dtype(xv.dtype)
        y, self.mean, self.var, self.rstd, self.r, self.d = self.k.batchrenorm_forward(
            xv, gamma, beta, _flat(running_mean, dtype), _flat(running_std, dtype), rmax, dmax, eps)
        return y

    def grads(self, dyv):
        return self.k.batchrenorm_backward(dyv, self.xv, self.gamma, self.mean, self.rstd, self.r, self.d)


class RowNorm(_NormFunction):
    """Layer, Instance and Group Norm: normalize rows of the (N, C, S) view, ``groups`` rows per sample.

    LayerNorm: view (R, K, 1), groups=1; InstanceNorm: (N, C, S), groups=C; GroupNorm: (N, C, S), groups=G.
    Leaves ``mean`` and ``rstd`` (N, groups) on the instance.
    """

    family = "rownorm"

    def compute(self, xv, gamma, beta, groups, eps):
        self.groups = groups
        y, self.mean, self.rstd = self.k.rownorm_forward(xv, gamma, beta, groups, eps)
        return y

    def grads(self, dyv):
        return self.k.rownorm_backward(dyv, self.xv, self.gamma, self.mean, self.rstd, self.groups)


class RMSNorm(_NormFunction):
    """y = x / sqrt(mean(x^2) + eps) * gamma over rows of the (R, K) view."""

    family = "rmsnorm"

    def compute(self, xv, gamma, beta, eps):
        y, self.rrms = self.k.rmsnorm_forward(xv, gamma, eps)
        return y

    def grads(self, dyv):
        dx, dgamma = self.k.rmsnorm_backward(dyv, self.xv, self.gamma, self.rrms)
        return dx, dgamma, None


class Moments:
    """Per-channel count, mean and M2 (sum of squared deviations from the mean), in float64.

    Two sets of moments of disjoint samples merge exactly (Chan, Golub & LeVeque 1979):

        n = na + nb,  delta = mean_b - mean_a
        mean = mean_a + delta * nb / n
        M2 = M2_a + M2_b + delta^2 * na * nb / n

    so the moments of many batches equal those of their concatenation, without keeping it.
    """

    def __init__(self, count, mean, m2):
        self.count, self.mean, self.m2 = count, mean, m2

    def merge(self, other):
        """The moments of both samples together (a new object)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def variance(self, unbiased=True):
        """M2 / (n - 1) (one Bessel correction over the whole count) or M2 / n."""
        if unbiased and self.count < 2:
            raise ValueError(f"an unbiased variance needs at least 2 values per channel, got {self.count}")
        if self.count == 0:
            raise ValueError("no values to compute a variance from")
        return self.m2 / (self.count - 1 if unbiased else self.count)


def merge_ranks(parts):
    """The Moments of every rank's (count, mean, M2) in ``parts`` (ranks, 3, C), merged in rank order."""
    counts = backend.to_numpy(parts[:, 0, 0])
    total = Moments(0, parts[0, 1] * 0, parts[0, 2] * 0)
    for count, part in zip(counts, parts):
        total = total.merge(Moments(int(count), part[1], part[2]))
    return total


def _compact(a, index):
    """The values of (N, C, S) ``a`` at the positions ``index`` of its N*S, as a (1, C, len(index)) array."""
    N, C, S = a.shape
    xp = backend.get_array_module(a)
    return xp.ascontiguousarray(a.transpose(1, 0, 2).reshape(C, N * S)[:, index])[None]


def _scatter(values, index, shape):
    """The inverse of ``_compact``: (1, C, len(index)) values at their positions of an (N, C, S) array of zeros."""
    N, C, S = shape
    xp = backend.get_array_module(values)
    out = xp.zeros((C, N * S), values.dtype)
    out[:, index] = values[0]
    return xp.ascontiguousarray(out.reshape(C, N, S).transpose(1, 0, 2))


class PhasedBatchNorm(Function):
    """Training BatchNorm through the phases of the kernel API, for what one ``batchnorm_forward`` cannot do:

    * ``mask`` (bool, (N, 1, S), True = valid): statistics over the valid positions only (Masked
      BatchNorm). They are gathered into a (1, C, M_valid) array, so every phase sees valid values only
      (padding may hold NaN); y and dx are 0 at the other positions.
    * ``sync=True``: statistics and sums over every rank of ``cubn.distributed`` (SyncBatchNorm).
      ``batchnorm_stats`` of this rank's values gives (count, mean, M2 = var*count), one ``all_gather``
      of that (3, C) float64 array, and ``merge_ranks`` in rank order on every rank; in backward one
      ``all_reduce`` of the (2, C) float64 (dgamma, dbeta) sums, which ``batchnorm_dx`` uses with the
      global count. dgamma and dbeta returned are this rank's own sums (data parallelism adds them up).

    x: the (N, C, S) view. Leaves ``n`` (values per channel, over all ranks), ``mean`` and biased ``var``
    (C,) on the instance (float64 when synchronized; None when n == 0, when y is all zeros).
    """

    def forward(self, x, gamma, beta, eps, mask=None, sync=False):
        xp = backend.get_array_module(x)
        self.k, acc, self.sync, self.shape = kernel_module("batchnorm", x), acc_dtype(x.dtype), sync, x.shape
        x = xp.ascontiguousarray(x)
        C = x.shape[1]
        self.index = None if mask is None else xp.flatnonzero(mask.reshape(-1))
        self.xc = x if self.index is None else _compact(x, self.index)
        self.gamma, self.local_n = _flat(gamma, acc), self.xc.shape[0] * self.xc.shape[2]
        stats = self.k.batchnorm_stats(self.xc, eps) if self.local_n else None
        if sync:
            local = xp.zeros((3, C))
            if stats is not None:
                local[0], local[1], local[2] = self.local_n, stats[0], stats[1].astype(numpy.float64) * self.local_n
            total = merge_ranks(distributed.all_gather(local))
            self.n, self.mean = total.count, total.mean
            self.var = total.m2 / max(self.n, 1)
            rstd = 1 / xp.sqrt(self.var + eps)
        else:
            self.n = self.local_n
            self.mean, self.var, rstd = stats if stats is not None else (None, None, None)
        if self.n == 0:
            self.mean = self.var = self.stats = None
            return xp.zeros_like(x)
        self.stats = (self.mean.astype(acc, copy=False), rstd.astype(acc, copy=False))   # what the kernels take
        y = self.k.batchnorm_normalize(self.xc, self.gamma, _flat(beta, acc), *self.stats)
        return y if self.index is None else _scatter(y, self.index, self.shape)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        if self.stats is None:                  # nothing valid anywhere: no value moved y
            zeros = xp.zeros(self.shape[1], acc_dtype(grad.dtype))
            return xp.zeros_like(grad), zeros, zeros
        grad = xp.ascontiguousarray(grad)
        gc = grad if self.index is None else _compact(grad, self.index)
        dgamma, dbeta = self.k.batchnorm_param_grads(gc, self.xc, *self.stats)
        dg, db = dgamma, dbeta
        if self.sync:
            dg, db = distributed.all_reduce(xp.stack([dgamma, dbeta]).astype(numpy.float64)).astype(dgamma.dtype)
        dx = self.k.batchnorm_dx(gc, self.xc, self.gamma, *self.stats, dg, db, self.n) if self.local_n else gc
        return (dx if self.index is None else _scatter(dx, self.index, self.shape)), dgamma, dbeta
