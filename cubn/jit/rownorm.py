"""Row normalization (LayerNorm, InstanceNorm, GroupNorm) as compiled loops: one row at a time.

Same functions, layout and [E#] formulas as ``cubn/ref/rownorm.py``. Each row (n, g)
is the K = (C/groups)*S contiguous values of its group; the per-channel gamma and
beta are spread over the row's positions first (``_per_position``: gamma[c] repeated
S times), so every loop below runs over one contiguous row and vectorizes, for
LayerNorm's S = 1 as for InstanceNorm's K = S.

Forward, per row: pass 1 sums x [E1]; pass 2 sums the deviations and their squares
[E2]; pass 3 writes y [E4]-[E5]. Backward, per row: pass 1 sums g = gamma*dy and
g*xhat and adds dy*xhat, dy to the per-position dgamma, dbeta [E6]-[E7]; pass 2
writes dx [E8].
"""
import numpy

from cubn.jit import compiled, loop, param
from cubn.ref import rownorm as twin
from cubn.ref.common import acc_dtype


@loop
def _forward(x, gamma, beta, eps, y, mean, rstd):
    """x, y: (N, G, K); gamma, beta: (G, K) per position; fills y and mean, rstd (N, G)."""
    N, G, K = x.shape
    for n in range(N):
        for g in range(G):
            row, out = x[n, g], y[n, g]
            total = 0.0
            for k in range(K):
                total += row[k]
            m = total / K                                                          # [E1]
            dev = 0.0
            sq = 0.0
            for k in range(K):
                d = row[k] - m
                dev += d
                sq += d * d
            # [E2] corrected two-pass, as in the twin: sq/K - mean(d)^2; a NaN stays NaN
            var = sq / K - (dev / K) ** 2
            if var < 0.0:
                var = 0.0
            mean[n, g] = m if var == var else var
            rstd[n, g] = 1.0 / numpy.sqrt(var + eps)                               # [E3]
            # read back in the statistics' dtype, as the twin uses them (and so that the loop
            # below runs in float32 for float32 input, not float64)
            m, r = mean[n, g], rstd[n, g]
            for k in range(K):
                out[k] = (row[k] - m) * r * gamma[g, k] + beta[g, k]               # [E4]-[E5]


@loop
def _backward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta):
    """dy, x, dx: (N, G, K); gamma (G, K); adds into dgamma, dbeta (G, K) float64; fills dx."""
    N, G, K = x.shape
    means = numpy.empty(2, x.dtype)
    for n in range(N):
        for g in range(G):
            row, grad, out = x[n, g], dy[n, g], dx[n, g]
            m, r = mean[n, g], rstd[n, g]
            sum_g = 0.0
            sum_gx = 0.0
            for k in range(K):
                xhat = (row[k] - m) * r                                            # [E4]
                gk = gamma[g, k] * grad[k]                                         # dL/dxhat
                sum_g += gk
                sum_gx += gk * xhat
                dgamma[g, k] += grad[k] * xhat                                     # [E7]
                dbeta[g, k] += grad[k]                                             # [E6]
            # the row's two means in x's dtype, so that the loop below runs in it: with float64
            # scalars every element's arithmetic would be float64 (LayerNorm (2048, 768): 2.3x slower)
            means[0], means[1] = sum_g / K, sum_gx / K
            mean_g, mean_gx = means[0], means[1]
            for k in range(K):
                xhat = (row[k] - m) * r
                out[k] = r * (gamma[g, k] * grad[k] - mean_g - xhat * mean_gx)     # [E8]


def _per_position(p, fill, C, S, groups, dtype):
    """A per-channel (C,) parameter (None: ``fill``) as (groups, K): each channel's value repeated S times."""
    return twin._per_position(param(p, fill, C, dtype), S).reshape(groups, -1)


def rownorm_forward(x, gamma, beta, groups, eps):
    """Normalize each row (n, g) of x (N, C, S); return (y, mean, rstd), mean/rstd (N, groups)."""
    if not compiled(x):
        return twin.rownorm_forward(x, gamma, beta, groups, eps)
    (N, C, S), acc = x.shape, acc_dtype(x.dtype)
    y = numpy.empty_like(x)
    mean, rstd = numpy.empty((N, groups), acc), numpy.empty((N, groups), acc)
    _forward(x.reshape(N, groups, -1), _per_position(gamma, 1, C, S, groups, acc),
             _per_position(beta, 0, C, S, groups, acc), float(eps), y.reshape(N, groups, -1), mean, rstd)
    return y, mean, rstd


def rownorm_backward(dy, x, gamma, mean, rstd, groups):
    """Gradients of rownorm_forward for upstream dy (N, C, S); return (dx, dgamma, dbeta)."""
    if not compiled(x):
        return twin.rownorm_backward(dy, x, gamma, mean, rstd, groups)
    (N, C, S), acc = x.shape, acc_dtype(x.dtype)
    dx = numpy.empty_like(x)
    dgamma, dbeta = numpy.zeros((groups, C // groups * S)), numpy.zeros((groups, C // groups * S))
    _backward(dy.astype(x.dtype, copy=False).reshape(N, groups, -1), x.reshape(N, groups, -1),
              _per_position(gamma, 1, C, S, groups, acc), mean, rstd, dx.reshape(N, groups, -1), dgamma, dbeta)
    # per position -> per channel: each channel's S positions summed
    return dx, dgamma.reshape(C, S).sum(axis=1).astype(acc), dbeta.reshape(C, S).sum(axis=1).astype(acc)
