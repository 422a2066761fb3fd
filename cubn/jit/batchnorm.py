"""Batch Normalization as compiled loops: each pass over x is one loop, the per-channel algebra NumPy.

Same functions, layout and [E#] formulas as ``cubn/ref/batchnorm.py``: x and dy are
(N, C, S), one statistic per channel c over its M = N*S values. The loops walk the
arrays in memory order (sample, channel, position) and keep float64 per-channel sums:

    _sum_deviations  sum (x - shift) and sum (x - shift)^2 per channel: [E1] with shift 0, then [E2]
    _sum_products    sum dy*(x - mean) and sum dy per channel: [E7] (before the factor rstd), [E6]
    _transform       y = (x - mean)*scale + shift per channel: [E4]-[E5], and the inference forward
    _dx              dx = scale*(dy - (offset + (x - mean)*slope)) per channel: [E8]

so the training forward is three passes over x (sum, deviations, y) and the backward two
(the sums, then dx), where the twin makes one NumPy pass per operation. What is left,
(C,) vectors, is the twin's own formulas in NumPy.
"""
import numpy

from cubn.jit import compiled, loop, param
from cubn.ref import batchnorm as twin
from cubn.ref.batchnorm import _inference_dx, _mean_or_nan, _rstd
from cubn.ref.common import acc_dtype


@loop
def _sum_deviations(x, shift, dev, sq):
    """Add sum(x - shift[c]) to dev[c] and sum((x - shift[c])^2) to sq[c], over each channel's values."""
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            a = 0.0
            b = 0.0
            for s in range(S):
                d = x[n, c, s] - shift[c]
                a += d
                b += d * d
            dev[c] += a
            sq[c] += b


@loop
def _sum_products(dy, x, mean, dot, total):
    """Add sum(dy*(x - mean[c])) to dot[c] and sum(dy) to total[c]."""
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            a = 0.0
            b = 0.0
            for s in range(S):
                a += dy[n, c, s] * (x[n, c, s] - mean[c])
                b += dy[n, c, s]
            dot[c] += a
            total[c] += b


@loop
def _transform(x, mean, scale, shift, y):
    """y = (x - mean[c])*scale[c] + shift[c]."""
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            for s in range(S):
                y[n, c, s] = (x[n, c, s] - mean[c]) * scale[c] + shift[c]


@loop
def _dx(dy, x, mean, scale, slope, offset, dx):
    """dx = scale[c]*(dy - (offset[c] + (x - mean[c])*slope[c]))."""
    N, C, S = x.shape
    for n in range(N):
        for c in range(C):
            for s in range(S):
                dx[n, c, s] = scale[c] * (dy[n, c, s] - (offset[c] + (x[n, c, s] - mean[c]) * slope[c]))


def _takes(x):
    """float32 and float64 with S > 1. For S = 1 (BatchNorm1d) the loop over a channel's one position
    costs more than it sums: (256, 512, 1) took 1.2 ms here against 0.32 in the twin, whose NumPy sums
    over the batch axis vectorize across channels."""
    return compiled(x) and x.shape[2] > 1


def _sums(loop_fn, *arrays):
    """Run a summing loop over arrays (N, C, S) and per-channel constants; its two (C,) float64 sums."""
    C = arrays[0].shape[1]
    first, second = numpy.zeros(C), numpy.zeros(C)
    loop_fn(*arrays, first, second)
    return first, second


def batchnorm_stats(x, eps):
    """Per-channel (mean, biased var, rstd) of x (N, C, S), two-pass, in the accumulation dtype."""
    if not _takes(x):
        return twin.batchnorm_stats(x, eps)
    M, acc = x.shape[0] * x.shape[2], acc_dtype(x.dtype)
    total, _ = _sums(_sum_deviations, x, numpy.zeros(x.shape[1]))
    mean = total / M                                                               # [E1]
    dev, sq = _sums(_sum_deviations, x, mean)
    # [E2] corrected two-pass, as in the twin: sq/M - mean(d)^2, clamped at 0 (a NaN stays NaN)
    var = numpy.maximum(sq / M - numpy.square(dev / M), 0).astype(acc)
    return _mean_or_nan(mean.astype(acc), var), var, _rstd(var, eps)


def batchnorm_normalize(x, gamma, beta, mean, rstd):
    """y = gamma*(x - mean)*rstd + beta [E4]-[E5] with given per-channel mean and rstd (C,)."""
    if not _takes(x):
        return twin.batchnorm_normalize(x, gamma, beta, mean, rstd)
    C, acc = x.shape[1], acc_dtype(x.dtype)
    y = numpy.empty_like(x)
    _transform(x, mean.astype(acc, copy=False), param(gamma, 1, C, acc) * rstd, param(beta, 0, C, acc), y)
    return y


def batchnorm_param_grads(dy, x, mean, rstd):
    """(dgamma, dbeta) [E6]-[E7]: per-channel sums of dy*xhat and dy over this x's values."""
    if not _takes(x):
        return twin.batchnorm_param_grads(dy, x, mean, rstd)
    acc = acc_dtype(x.dtype)
    dot, dbeta = _sums(_sum_products, dy.astype(x.dtype, copy=False), x, mean.astype(acc, copy=False))
    return (dot * rstd).astype(acc), dbeta.astype(acc)                             # sum dy*xhat = rstd*sum dy*d


def batchnorm_dx(dy, x, gamma, mean, rstd, dgamma, dbeta, count):
    """dx [E8] of training BatchNorm, given the per-channel sums dgamma, dbeta over all ``count`` values."""
    if not _takes(x):
        return twin.batchnorm_dx(dy, x, gamma, mean, rstd, dgamma, dbeta, count)
    acc = acc_dtype(x.dtype)
    dx = numpy.empty_like(x)
    # dbeta/M flows through the mean, xhat*dgamma/M = (x - mean)*(rstd*dgamma/M) through the variance
    _dx(dy.astype(x.dtype, copy=False), x, mean.astype(acc, copy=False), param(gamma, 1, x.shape[1], acc) * rstd,
        (rstd * dgamma / count).astype(acc), (dbeta / count).astype(acc), dx)
    return dx


def batchnorm_forward(x, gamma, beta, eps):
    """Training forward of x (N, C, S) with batch statistics; return (y, mean, var, rstd)."""
    if not _takes(x):
        return twin.batchnorm_forward(x, gamma, beta, eps)
    mean, var, rstd = batchnorm_stats(x, eps)
    return batchnorm_normalize(x, gamma, beta, mean, rstd), mean, var, rstd


def batchnorm_backward(dy, x, gamma, mean, rstd):
    """Gradients of batchnorm_forward for upstream dy (N, C, S); return (dx, dgamma, dbeta)."""
    if not _takes(x):
        return twin.batchnorm_backward(dy, x, gamma, mean, rstd)
    dgamma, dbeta = batchnorm_param_grads(dy, x, mean, rstd)
    return batchnorm_dx(dy, x, gamma, mean, rstd, dgamma, dbeta, x.shape[0] * x.shape[2]), dgamma, dbeta


def batchnorm_inference(x, gamma, beta, mean, var, eps):
    """Eval forward with given (running) mean and var (C,): y = gamma*(x-mean)/sqrt(var+eps) + beta."""
    if not _takes(x):
        return twin.batchnorm_inference(x, gamma, beta, mean, var, eps)
    return batchnorm_normalize(x, gamma, beta, mean, _rstd(var, eps))


def batchnorm_inference_backward(dy, x, gamma, mean, var, eps):
    """Gradients of batchnorm_inference (mean and var constants): dx = gamma*rstd*dy; return (dx, dgamma, dbeta)."""
    if not _takes(x):
        return twin.batchnorm_inference_backward(dy, x, gamma, mean, var, eps)
    rstd = _rstd(var, eps)
    dgamma, dbeta = batchnorm_param_grads(dy, x, mean, rstd)
    return _inference_dx(dy, gamma, rstd, x.dtype), dgamma, dbeta      # one NumPy pass: nothing to fuse
