"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275), NumPy twin.

Twin of ``kernels/batchrenorm.cu`` (not written yet; it will carry the same
names and [R#] tags), launched by ``cubn/cuda/batchrenorm.py``.

Layout and conventions are BatchNorm's (``batchnorm.py``, whose statistics,
[E1]-[E8], and backward this reuses): x and dy are (N, C, S), statistics per
channel over M = N*S values, normalization with the biased batch variance.
running_mean and running_std are the moving mean and moving standard deviation
(C,), in the accumulation dtype:

    [R1] r = clip(sqrt(var+eps) / running_std, 1/rmax, rmax)
    [R2] d = clip((mean - running_mean) / running_std, -dmax, dmax)
    [R3] y = gamma*(xhat*r + d) + beta,   xhat = (x-mean)*rstd as in BN [E4]

r and d are (C,) in the accumulation dtype and constants for the backward
(the paper's stop_gradient). With them fixed, y = (gamma*r)*xhat + (gamma*d + beta)
is BatchNorm with gamma*r in place of gamma, so dx and dbeta are BN's, and

    [R4] dgamma = sum dy*(xhat*r + d) = r*sum(dy*xhat) + d*sum(dy) = r*dgamma_BN + d*dbeta

rmax=1, dmax=0 give r=1, d=0 and exactly BatchNorm's results.
"""
from cubn.backend import get_array_module
# Batch Renorm is BatchNorm plus r and d: BN's functions, not copies of them. The compiled loops
# (cubn/jit/batchrenorm.py) run these same formulas on their own BatchNorm, passed in as ``bn``.
from cubn.ref import batchnorm


def batchrenorm_forward(x, gamma, beta, running_mean, running_std, rmax, dmax, eps):
    """Training forward of x (N, C, S); return (y, mean, var, rstd, r, d)."""
    return _renorm_forward(batchnorm, x, gamma, beta, running_mean, running_std, rmax, dmax, eps)


def batchrenorm_backward(dy, x, gamma, mean, rstd, r, d):
    """Gradients of batchrenorm_forward with r, d held constant; return (dx, dgamma, dbeta)."""
    return _renorm_backward(batchnorm, dy, x, gamma, mean, rstd, r, d)


def _renorm_forward(bn, x, gamma, beta, running_mean, running_std, rmax, dmax, eps):
    """batchrenorm_forward on the BatchNorm functions of the module ``bn``."""
    xp = get_array_module(x)
    mean, var, rstd = bn.batchnorm_stats(x, eps)                                    # [E1]-[E3]
    t = var.dtype.type  # Python or NumPy scalars must not promote float32 statistics
    r = xp.clip(xp.sqrt(var + t(eps)) / running_std, t(1 / rmax), t(rmax))         # [R1]
    d = xp.clip((mean - running_mean) / running_std, t(-dmax), t(dmax))            # [R2]
    # [R3] as BatchNorm's normalize with gamma*r for gamma and gamma*d + beta for beta
    scale, shift = (r, d) if gamma is None else (gamma * r, gamma * d)
    shift = shift if beta is None else shift + beta
    return bn.batchnorm_normalize(x, scale, shift, mean, rstd), mean, var, rstd, r, d


def _renorm_backward(bn, dy, x, gamma, mean, rstd, r, d):
    """batchrenorm_backward on the BatchNorm functions of the module ``bn``."""
    dx, dgamma_bn, dbeta = bn.batchnorm_backward(dy, x, r if gamma is None else gamma * r, mean, rstd)
    return dx, r * dgamma_bn + d * dbeta, dbeta                                    # [R4]
