"""Batch Normalization (Ioffe & Szegedy 2015, arXiv:1502.03167), NumPy twin.

Twin of ``kernels/batchnorm.cu`` (not written yet; it will carry the same names
and [E#] tags), launched by ``cubn/cuda/batchnorm.py``.

Layout: ``x`` and ``dy`` are (N, C, S), C-contiguous (the ops layer views
(N, C, *spatial) this way). One statistic per channel c over its M = N*S values:

    [E1] mean[c] = (1/M) sum x          [E2] var[c] = (1/M) sum (x-mean)^2   (biased)
    [E3] rstd = 1/sqrt(var+eps)         [E4] xhat = (x-mean)*rstd    [E5] y = gamma*xhat + beta
    [E6] dbeta = sum dy   [E7] dgamma = sum dy*xhat   [E8] dx = gamma*rstd*(dy - (dbeta + xhat*dgamma)/M)

Conventions: training normalizes with the biased batch variance (the unbiased
running variance is the Module's business); inference uses the given mean and
var, which are constants for its backward. Statistics are two-pass, accumulated
in the accumulation dtype (float64 for float64 input, float32 otherwise), never
E[x^2] - E[x]^2. gamma, beta are (C,) of the accumulation dtype or None (meaning
1 and 0); mean, var, rstd, dgamma, dbeta are (C,) of the accumulation dtype; y
and dx have x's dtype.
"""
from cubn.backend import get_array_module
from cubn.ref.common import acc_dtype, channel_dot, channel_sum


def _per_channel(v):
    """A (C,) array shaped (1, C, 1), to broadcast over (N, C, S)."""
    return v.reshape(1, -1, 1)


def _acc(a):
    return a.astype(acc_dtype(a.dtype), copy=False)


def _rstd(var, eps):
    xp = get_array_module(var)
    return 1 / xp.sqrt(var + var.dtype.type(eps))                                  # [E3]


def _deviations(x, mean):
    """x - mean per channel, as a new array of the accumulation dtype (the callers reuse it in place)."""
    return _acc(x) - _per_channel(mean)


def _xhat(x, mean, rstd):
    """[E4] as a new array of the accumulation dtype."""
    xhat = _deviations(x, mean)
    xhat *= _per_channel(rstd)
    return xhat


def _normalize_deviations(d, gamma, beta, rstd, dtype):
    """[E4]-[E5] in place on the deviations d = x - mean: d*(gamma*rstd) + beta, cast to ``dtype``.
    gamma*rstd is one per-channel factor, one pass fewer than xhat*gamma."""
    d *= _per_channel(rstd if gamma is None else gamma * rstd)
    return _affine(d, None, beta, dtype)


def _affine(xhat, gamma, beta, dtype):
    """gamma*xhat + beta per channel (None meaning 1 and 0), in place on xhat, cast to ``dtype``."""
    if gamma is not None:
        xhat *= _per_channel(gamma)                                                # [E5]
    if beta is not None:
        xhat += _per_channel(beta)
    return xhat.astype(dtype, copy=False)


def batchnorm_stats(x, eps):
    """Per-channel (mean, biased var, rstd) of x (N, C, S), two-pass, in the accumulation dtype."""
    return _stats(x, eps)[:3]


def _stats(x, eps):
    """batchnorm_stats, and the deviations x - mean it computed on the way (for batchnorm_forward)."""
    xp = get_array_module(x)
    xa = _acc(x)
    M = x.shape[0] * x.shape[2]
    mean = channel_sum(xa) / M                                                     # [E1]
    d = xa - _per_channel(mean)
    # [E2] second pass over the deviations. Subtracting mean(d)^2 (zero in exact
    # arithmetic) cancels the rounding error of the stored mean, which would
    # otherwise add its square to var: 1e4 + 0.01*randn in float32 gets var ~1e-3
    # high ("corrected two-pass", Chan, Golub & LeVeque 1983, eq. 1.7). Both terms
    # read deviations, never raw x, so this is not E[x^2] - E[x]^2. The clamp keeps
    # a rounding-negative var of a constant channel from reaching sqrt.
    mean_d = channel_sum(d) / M
    var = xp.maximum(channel_dot(d, d) / M - xp.square(mean_d), 0)
    return _mean_or_nan(mean, var), var, _rstd(var, eps), d


def _mean_or_nan(mean, var):
    """The non-finite contract (cubn/ref/__init__.py): where var is NaN, the mean is NaN too."""
    return get_array_module(mean).where(var != var, var, mean)


def batchnorm_normalize(x, gamma, beta, mean, rstd):
    """y = gamma*(x - mean)*rstd + beta [E4]-[E5] with given per-channel mean and rstd (C,)."""
    return _normalize_deviations(_deviations(x, mean), gamma, beta, rstd, x.dtype)


def _param_grads(dy, d, rstd):
    """(dgamma, dbeta) [E6]-[E7] of dy (accumulation dtype) and the deviations d = x - mean:
    sum dy*xhat = rstd * sum dy*d, so xhat itself is never stored."""
    return channel_dot(dy, d) * rstd, channel_sum(dy)


def batchnorm_param_grads(dy, x, mean, rstd):
    """(dgamma, dbeta) [E6]-[E7]: per-channel sums of dy*xhat and dy over this x's values."""
    return _param_grads(_acc(dy), _deviations(x, mean), rstd)


def _dx(dy, d, gamma, rstd, dgamma, dbeta, count, dtype):
    """[E8] from the deviations d = x - mean, overwriting them: dx = gamma*rstd*(dy - (dbeta + xhat*dgamma)/M),
    with xhat*dgamma = d*(rstd*dgamma)."""
    # every x of a channel moves its mean and var: dbeta/M is the gradient that
    # flows through the mean, xhat*dgamma/M the one that flows through the variance.
    d *= _per_channel(rstd * dgamma / count)
    d += _per_channel(dbeta / count)
    dx = get_array_module(d).subtract(dy, d, out=d)
    dx *= _per_channel(rstd if gamma is None else gamma * rstd)
    return dx.astype(dtype, copy=False)


def batchnorm_dx(dy, x, gamma, mean, rstd, dgamma, dbeta, count):
    """dx [E8] of training BatchNorm, given the per-channel sums dgamma, dbeta over all ``count`` values
    of each channel (this x's own sums, or those of a batch split over processes: SyncBatchNorm)."""
    return _dx(_acc(dy), _deviations(x, mean), gamma, rstd, dgamma, dbeta, count, x.dtype)


def batchnorm_forward(x, gamma, beta, eps):
    """Training forward of x (N, C, S) with batch statistics; return (y, mean, var, rstd).

    batchnorm_stats then batchnorm_normalize, except that y is made in place from the statistics'
    deviations x - mean (the same numbers), which saves one pass over x.
    """
    mean, var, rstd, d = _stats(x, eps)
    return _normalize_deviations(d, gamma, beta, rstd, x.dtype), mean, var, rstd


def batchnorm_backward(dy, x, gamma, mean, rstd):
    """Gradients of batchnorm_forward for upstream dy (N, C, S); return (dx, dgamma, dbeta).

    mean and rstd are the forward's; the deviations x - mean are recomputed once and shared by
    batchnorm_param_grads and batchnorm_dx.
    """
    dy, d = _acc(dy), _deviations(x, mean)
    dgamma, dbeta = _param_grads(dy, d, rstd)
    return _dx(dy, d, gamma, rstd, dgamma, dbeta, x.shape[0] * x.shape[2], x.dtype), dgamma, dbeta


def batchnorm_inference(x, gamma, beta, mean, var, eps):
    """Eval forward with given (running) mean and var (C,): y = gamma*(x-mean)/sqrt(var+eps) + beta.

    Computed as (x-mean)*rstd rather than the folded x*scale + shift, which loses
    precision when the mean is large next to the spread of x.
    """
    return _affine(_xhat(x, mean, _rstd(var, eps)), gamma, beta, x.dtype)


def batchnorm_inference_backward(dy, x, gamma, mean, var, eps):
    """Gradients of batchnorm_inference; return (dx, dgamma, dbeta).

    mean and var are constants here, so dx = gamma*rstd*dy with no correction terms.
    """
    rstd = _rstd(var, eps)
    dy = _acc(dy)
    dgamma, dbeta = _param_grads(dy, _deviations(x, mean), rstd)
    return _inference_dx(dy, gamma, rstd, x.dtype), dgamma, dbeta


def _inference_dx(dy, gamma, rstd, dtype):
    """dx of batchnorm_inference: gamma*rstd*dy per channel, cast to ``dtype``."""
    scale = rstd if gamma is None else gamma * rstd
    return (_per_channel(scale) * dy).astype(dtype, copy=False)
