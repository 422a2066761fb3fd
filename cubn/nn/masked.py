"""Masked statistics: Batch, Group and Layer Norm over the valid entries of a padded batch.

A batch of sequences of different lengths is padded to one length L; the
padding must not count in the mean and variance, or every example's output
would depend on how much padding its batch happened to carry. ``mask`` says
which entries are real: True = valid, False = padding.

Masked BatchNorm runs the BatchNorm kernel API's phases on the valid values
only (``cubn.ops.norm.PhasedBatchNorm``, the CUDA kernels on the GPU: the
count is the number of valid entries); this file gives it the mask
(``channel_mask``). Masked Group and Layer Norm are compositions of
differentiable Tensor ops (sum, mul, div, sqrt, reshape), so the tape derives
their backward on the NumPy and the CuPy path alike; they have no
hand-written kernel. Their one op of their own, ``_Keep``, is ``where(mask, x, 0)``:

* the statistics only see valid entries, even when the padding holds NaN or
  Inf (``x * mask`` would give NaN * 0 = NaN);
* the output is exactly 0 at masked positions (a choice: it keeps padding
  inert for the next layer, and it is what a masked sum expects);
* the gradient w.r.t. x at masked positions is exactly 0.

Statistics are two-pass (mean first, then the mean of squared deviations) in
float32 at least (float64 for float64 input). A group with no valid entry gets
mean 0 and its variance replaced by 1 inside the square root, so its output
is 0 and its gradients are 0, never NaN; callers leave running statistics
untouched for it.
"""
import math

import numpy

from .. import backend
from ..ops import math as _math
from ..tensor import Function, Tensor, as_tensor


class _Keep(Function):
    """y = where(mask, x, 0) cast to ``dtype``; dy/dx = where(mask, dy, 0) in x's dtype.

    ``mask`` (a bool array broadcastable to x) is a constant, not an input of the tape.
    """

    def forward(self, x, mask, dtype):
        self.mask, self.x_dtype = mask, x.dtype
        xp = backend.get_array_module(x)
        return xp.where(mask, x, 0).astype(dtype, copy=False)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        return xp.where(self.mask, grad, 0).astype(self.x_dtype, copy=False)


def _keep(x, mask, dtype):
    return _Keep.apply(x, mask=mask, dtype=numpy.dtype(dtype))


def _stats_dtype(dtype):
    """float32 for float16/float32 input, float64 for float64: where sums are accumulated."""
    return numpy.promote_types(dtype, numpy.float32)


def _bool_mask(mask, x):
    """``mask`` as a bool array on x's device (a Tensor's data, or an array)."""
    m = mask.data if isinstance(mask, Tensor) else mask
    if not hasattr(m, "dtype"):
        raise TypeError(f"mask must be a bool array or Tensor (True = valid, False = padding), "
                        f"got {type(mask).__name__}")
    if m.dtype != numpy.bool_:
        raise TypeError(f"mask must have dtype bool (True = valid, False = padding), got dtype {m.dtype}")
    return backend.to_device(m, x.device)


def _broadcast(m, shape, what, x):
    xp = backend.get_array_module(m)
    try:
        return xp.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"mask of shape {tuple(m.shape)} must broadcast to {what} {tuple(shape)} "
                         f"(input shape {tuple(x.shape)})") from None


def channel_mask(mask, x):
    """The mask of an (N, C, *spatial) input as a bool array of shape (N, 1, S), S = prod(spatial).

    ``mask`` must broadcast to the input's shape without the channel axis, (N, *spatial):
    for BatchNorm1d on (N, C, L) that is (N, L). Every channel shares it.
    """
    x = as_tensor(x)
    N, S = x.shape[0], math.prod(x.shape[2:])
    m = _broadcast(_bool_mask(mask, x), (N,) + tuple(x.shape[2:]), "the input's shape without the channel axis", x)
    return m.reshape(N, 1, S)


def valid_count(mask, x):
    """Number of valid values per channel (the same for every channel); one device sync on CuPy."""
    return int(channel_mask(mask, x).sum())


def group_counts(mask, x, num_groups):
    """Number of valid values in each (sample, group) of GroupNorm, shape (N,)."""
    per_channel = channel_mask(mask, x).sum(axis=(1, 2))
    return per_channel * (x.shape[1] // num_groups)


def _standardize(x, m, axes, eps):
    """xhat of the valid entries of ``x`` (a Tensor) over ``axes``; ``m`` a bool array broadcastable to x.

    Returns (xhat, mean, biased var) as Tensors (mean and var with kept dims); xhat is 0 where masked.
    """
    xp = backend.get_array_module(m)
    dtype = _stats_dtype(x.dtype)
    weights = xp.broadcast_to(m, x.shape).astype(dtype)        # 1 for a valid entry, 0 for padding
    count = weights.sum(axis=axes, keepdims=True)
    per_value = 1 / xp.maximum(count, 1)                        # 1/count, and no 0/0 where nothing is valid
    valid = _keep(x, m, dtype)                                  # padding -> 0, whatever it held
    mean = valid.sum(axes, keepdims=True) * per_value
    centered = (valid - mean) * weights                         # 0 at padding again (it was 0 - mean)
    var = (centered * centered).sum(axes, keepdims=True) * per_value
    # Nothing valid: var is 0 and centered is 0; add 1 under the root so 0 * rstd stays 0, not 0 * inf.
    guard = eps + (count == 0).astype(dtype)
    xhat = centered / (var + guard).sqrt()
    return xhat, mean, var


def _affine(xhat, weight, bias, shape):
    """gamma * xhat + beta with gamma, beta (Tensors, arrays or None) viewed as ``shape``."""
    y = xhat if weight is None else xhat * _math.reshape(as_tensor(weight), shape)
    return y if bias is None else y + _math.reshape(as_tensor(bias), shape)


def zero_masked_channels(y, mask):
    """``y`` (N, C, *spatial) with masked positions set to 0 (and no gradient through them)."""
    N, C, S = y.shape[0], y.shape[1], math.prod(y.shape[2:])
    return _keep(y.reshape(N, C, S), channel_mask(mask, y), y.dtype).reshape(y.shape)


def group_norm(x, mask, num_groups, weight, bias, eps):
    """GroupNorm of (N, C, *spatial): each (sample, group) over its valid entries; affine per channel."""
    x = as_tensor(x)
    N, C, S, G = x.shape[0], x.shape[1], math.prod(x.shape[2:]), num_groups
    m = channel_mask(mask, x)
    xhat, _, _ = _standardize(x.reshape(N, G, C // G, S), m.reshape(N, 1, 1, S), (2, 3), eps)
    y = _affine(xhat.reshape(N, C, S), weight, bias, (1, C, 1))
    return _keep(y, m, x.dtype).reshape(x.shape)


def layer_norm(x, mask, rows, weight, bias, eps):
    """LayerNorm over the trailing K values of each of ``rows`` = (R, K) rows; affine per element.

    ``mask`` must broadcast to the input's full shape (for (N, C, L) normalized over (C, L),
    a padding mask is (N, 1, L)).
    """
    x = as_tensor(x)
    R, K = rows
    m = _broadcast(_bool_mask(mask, x), x.shape, "the input's shape", x).reshape(R, K)
    xhat, _, _ = _standardize(x.reshape(R, K), m, (1,), eps)
    y = _affine(xhat, weight, bias, (1, K))
    return _keep(y, m, x.dtype).reshape(x.shape)
