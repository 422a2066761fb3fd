"""Launchers for RMSNorm on CuPy arrays: the kernels of ``kernels/rownorm.cu`` with center=0.

The CUDA twin of ``cubn/ref/rmsnorm.py``: the same functions and positional
signatures, plus a keyword-only ``version=`` (None: ``DEFAULT_VERSIONS``).
``x`` is (R, K), each row normalized by its root mean square, the affine per
element; the kernels see it as rownorm's (R, K, 1) with groups=1 and skip the
mean ([M#] tags in kernels/rownorm.cu). gamma None (meaning 1) reaches the
kernels as a null pointer. Versions 1 and 2 are rownorm's (see
``cubn/cuda/rownorm.py``); the dbeta the shared kernels also compute is dropped.
"""
from cubn.ref.common import acc_dtype

from .rownorm import _acc_array, _backward, _eps, _forward, _input, _rows, _version

VERSIONS = {"rmsnorm_forward": (1, 2), "rmsnorm_backward": (1, 2)}
DEFAULT_VERSIONS = {"rmsnorm_forward": 2, "rmsnorm_backward": 2}


def rmsnorm_forward(x, gamma, eps, *, version=None):
    """Normalize each row of x (R, K) by its root mean square; return (y, rrms), rrms (R,).

    gamma: (K,) or None (1); rrms in the accumulation dtype (float64 for float64 x, float32
    otherwise), y in x's dtype. eps finite and >= 0.
    """
    v = _version("rmsnorm_forward", version, VERSIONS, DEFAULT_VERSIONS)
    x = _input("x", x, 2)
    rows = _rows((*x.shape, 1), 1)
    acc = acc_dtype(x.dtype)
    y, _, rrms = _forward(x, _acc_array("gamma", gamma, (rows.C,), acc), None, rows, _eps(eps, acc), False, v)
    return y, rrms


def rmsnorm_backward(dy, x, gamma, rrms, *, version=None):
    """Gradients of rmsnorm_forward for upstream dy (R, K); return (dx, dgamma).

    rrms: (R,) as rmsnorm_forward returned it; dx in x's dtype, dgamma (K,) in the accumulation dtype.
    """
    v = _version("rmsnorm_backward", version, VERSIONS, DEFAULT_VERSIONS)
    x = _input("x", x, 2)
    dy = _input("dy", dy, 2, like=x)
    rows = _rows((*x.shape, 1), 1)
    acc = acc_dtype(x.dtype)
    gamma = _acc_array("gamma", gamma, (rows.C,), acc)
    if rrms is None:
        raise TypeError("rrms must be the array rmsnorm_forward returned, got None")
    rrms = _acc_array("rrms", rrms, (rows.R,), acc)
    dx, dgamma, _ = _backward(dy, x, gamma, None, rrms, rows, False, v)
    return dx, dgamma
