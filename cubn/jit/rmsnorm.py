"""RMSNorm as compiled loops: one row at a time.

Same functions, layout and [M#] formulas as ``cubn/ref/rmsnorm.py``: x is (R, K), each
row normalized by its root mean square, the affine per element of a row. Forward, per
row: pass 1 sums x^2 [M1]; pass 2 writes y [M3]-[M4]. Backward, per row: pass 1 sums
g*xhat (g = gamma*dy) and adds dy*xhat to dgamma [M5]; pass 2 writes dx [M6].
"""
import numpy

from cubn.jit import compiled, loop, param
from cubn.ref import rmsnorm as twin
from cubn.ref.common import acc_dtype


@loop
def _forward(x, gamma, eps, y, rrms):
    """x, y: (R, K); gamma (K,); fills y and rrms (R,)."""
    R, K = x.shape
    for i in range(R):
        row, out = x[i], y[i]
        sq = 0.0
        for k in range(K):
            sq += row[k] * row[k]
        rrms[i] = 1.0 / numpy.sqrt(sq / K + eps)                                   # [M1] [M2]
        r = rrms[i]  # in the statistics' dtype, so that the loop below runs in x's precision
        for k in range(K):
            out[k] = row[k] * r * gamma[k]                                         # [M3] [M4]


@loop
def _backward(dy, x, gamma, rrms, dx, dgamma):
    """dy, x, dx: (R, K); gamma (K,); adds into dgamma (K,) float64; fills dx."""
    R, K = x.shape
    mean = numpy.empty(1, x.dtype)
    for i in range(R):
        row, grad, out = x[i], dy[i], dx[i]
        r = rrms[i]
        sum_gx = 0.0
        for k in range(K):
            xhat = row[k] * r                                                      # [M3]
            sum_gx += gamma[k] * grad[k] * xhat
            dgamma[k] += grad[k] * xhat                                            # [M5]
        mean[0] = sum_gx / K    # mean(g*xhat) in x's dtype, as in cubn/jit/rownorm.py
        m = mean[0]
        for k in range(K):
            out[k] = r * (gamma[k] * grad[k] - row[k] * r * m)                     # [M6]


def rmsnorm_forward(x, gamma, eps):
    """Normalize each row of x (R, K) by its root mean square; return (y, rrms), rrms (R,)."""
    if not compiled(x):
        return twin.rmsnorm_forward(x, gamma, eps)
    acc = acc_dtype(x.dtype)
    y, rrms = numpy.empty_like(x), numpy.empty(x.shape[0], acc)
    _forward(x, param(gamma, 1, x.shape[1], acc), float(eps), y, rrms)
    return y, rrms


def rmsnorm_backward(dy, x, gamma, rrms):
    """Gradients of rmsnorm_forward for upstream dy (R, K); return (dx, dgamma)."""
    if not compiled(x):
        return twin.rmsnorm_backward(dy, x, gamma, rrms)
    acc = acc_dtype(x.dtype)
    dx, dgamma = numpy.empty_like(x), numpy.zeros(x.shape[1])
    _backward(dy.astype(x.dtype, copy=False), x,
              param(gamma, 1, x.shape[1], acc), rrms, dx, dgamma)
    return dx, dgamma.astype(acc)
