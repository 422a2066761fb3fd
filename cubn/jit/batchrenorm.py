"""Batch Renormalization on the compiled BatchNorm loops.

The [R#] formulas are the twin's (``cubn/ref/batchrenorm.py``), run on ``cubn.jit.batchnorm``'s
statistics, normalization and backward instead of the twin's: r and d are per-channel NumPy
arithmetic, and every pass over x or dy is one of BatchNorm's loops.
"""
from cubn.jit import batchnorm
from cubn.ref import batchrenorm as twin


def batchrenorm_forward(x, gamma, beta, running_mean, running_std, rmax, dmax, eps):
    """Training forward of x (N, C, S); return (y, mean, var, rstd, r, d)."""
    return twin._renorm_forward(batchnorm, x, gamma, beta, running_mean, running_std, rmax, dmax, eps)


def batchrenorm_backward(dy, x, gamma, mean, rstd, r, d):
    """Gradients of batchrenorm_forward with r, d held constant; return (dx, dgamma, dbeta)."""
    return twin._renorm_backward(batchnorm, dy, x, gamma, mean, rstd, r, d)
