"""CUDA launchers for Batch Renormalization: ``kernels/batchrenorm.cu`` on top of BatchNorm's kernels;
twin of ``cubn/ref/batchrenorm.py``.

Same functions and positional signatures as the twin, plus a keyword-only ``version`` (None: the
default in ``DEFAULT_VERSIONS``) that picks the version of the BatchNorm kernels underneath (see
``cubn.cuda.batchnorm``); the two per-channel kernels of batchrenorm.cu have one version. Shapes,
dtypes, checks and the null-pointer convention for gamma/beta are BatchNorm's launcher's.
running_mean and running_std (C,) are the moving mean and moving standard deviation; r and d (C,)
come back for the backward, where they are constants. rmax >= 1 and dmax >= 0 must be finite;
rmax=1, dmax=0 give BatchNorm's results.

Forward:  BN statistics -> batchrenorm_forward_params (r, d, gamma*r, gamma*d + beta) -> BN normalize.
Backward: BN per-channel sums -> batchrenorm_backward_params (gamma*r, dgamma [R4]) -> BN dx with gamma*r.
"""
import numpy

from cubn import backend
# Batch Renorm is BatchNorm plus r and d: BN's launcher pieces, not copies of them.
from . import batchnorm as _bn

VERSIONS = {
    "batchrenorm_forward": _bn.VERSIONS["batchnorm_forward"],
    "batchrenorm_backward": _bn.VERSIONS["batchnorm_backward"],
}
DEFAULT_VERSIONS = {
    "batchrenorm_forward": _bn.DEFAULT_VERSIONS["batchnorm_forward"],
    "batchrenorm_backward": _bn.DEFAULT_VERSIONS["batchnorm_backward"],
}

_FILE = "batchrenorm.cu"


def _per_channel(name, defines, C, args):
    """A batchrenorm.cu kernel with one thread per channel: grid (ceil(C/256)), block 256."""
    _bn._kernel(_FILE, name, defines)((_bn._ceil(C, 256),), (256,), args)


def batchrenorm_forward(x, gamma, beta, running_mean, running_std, rmax, dmax, eps, *, version=None):
    """Training forward of x (N, C, S); return (y, mean, var, rstd, r, d)."""
    version = _bn._pick_version(VERSIONS, DEFAULT_VERSIONS, "batchrenorm_forward", version)
    x, defines, acc = _bn._check_input(x)
    _bn._check_training_size(x)
    C = x.shape[1]
    gamma = _bn._check_vector(gamma, "gamma", C, acc, optional=True)
    beta = _bn._check_vector(beta, "beta", C, acc, optional=True)
    running_mean = _bn._check_vector(running_mean, "running_mean", C, acc)
    running_std = _bn._check_vector(running_std, "running_std", C, acc)
    rmax_acc = _bn._check_scalar(rmax, "rmax", acc, low=1.0)
    rmax_inv = acc(1 / float(rmax))   # rounded once from double, as the twin's t(1 / rmax)
    dmax = _bn._check_scalar(dmax, "dmax", acc)
    eps = _bn._check_scalar(eps, "eps", acc)
    mean, var, rstd = _bn._batch_stats(x, defines, eps, version)
    xp = backend.get_array_module(x)
    r, d, gamma_r, beta_d = (xp.empty(C, acc) for _ in range(4))
    _per_channel("batchrenorm_forward_params", defines, C,
                 (mean, var, running_mean, running_std, _bn._ptr(gamma, mean), _bn._ptr(beta, mean), r, d, gamma_r, beta_d,
                  numpy.int64(C), rmax_inv, rmax_acc, dmax, eps))
    return _bn._normalize(x, defines, mean, rstd, gamma_r, beta_d, version), mean, var, rstd, r, d


def batchrenorm_backward(dy, x, gamma, mean, rstd, r, d, *, version=None):
    """Gradients of batchrenorm_forward with r, d held constant; return (dx, dgamma, dbeta)."""
    version = _bn._pick_version(VERSIONS, DEFAULT_VERSIONS, "batchrenorm_backward", version)
    x, defines, acc = _bn._check_input(x)
    _bn._check_training_size(x)
    dy = _bn._check_like(dy, x, "dy")
    C = x.shape[1]
    gamma = _bn._check_vector(gamma, "gamma", C, acc, optional=True)
    mean, rstd, r, d = (_bn._check_vector(a, name, C, acc) for a, name in
                        ((mean, "mean"), (rstd, "rstd"), (r, "r"), (d, "d")))
    dgamma_bn, dbeta = _bn._param_grads(dy, x, defines, mean, rstd, version)
    xp = backend.get_array_module(x)
    gamma_r, dgamma = xp.empty(C, acc), xp.empty(C, acc)
    _per_channel("batchrenorm_backward_params", defines, C,
                 (_bn._ptr(gamma, r), r, d, dgamma_bn, dbeta, gamma_r, dgamma, numpy.int64(C)))
    return _bn._dx(dy, x, defines, mean, rstd, gamma_r, dgamma_bn, dbeta, version), dgamma, dbeta
