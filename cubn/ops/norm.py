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

from .. import backend
from ..ref.common import acc_dtype
from ..tensor import Function


def kernel_module(family, x):
    """``cubn.cuda.<family>`` for CuPy arrays where that twin exists, ``cubn.ref.<family>`` otherwise.

    ``CUBN_KERNELS`` in the environment (read at each call) changes that:
    ``ref`` sends CuPy arrays through the NumPy twins too (a kernel-free GPU baseline,
    and a way to rule kernels out when debugging); ``emulate`` sends NumPy arrays
    through ``cubn.cuda``, whose kernels then run on the CPU emulator (``cubn.emulate``).
    """
    mode = os.environ.get("CUBN_KERNELS")
    on_kernels = not backend.is_cupy(x) if mode == "emulate" else backend.is_cupy(x) and mode != "ref"
    if on_kernels:
        name = "cubn.cuda." + family
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, "cubn.cuda"):
                raise
    return importlib.import_module("cubn.ref." + family)


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
