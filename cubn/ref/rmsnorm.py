"""RMSNorm: root-mean-square normalization of rows, no centering (NumPy twin).

Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467.
Twin of ``kernels/rownorm.cu`` (not written yet; its RMSNorm kernels will carry the
same names and [M#] tags), launched by ``cubn/cuda/rmsnorm.py``.

Layout: ``x`` is (R, K), C-contiguous; each row of K values is normalized on its
own, the affine is per element of a row (RMSNorm over trailing dims reshapes to
R = prod(leading dims), K = prod(normalized_shape)). There is no mean, so no
cancellation: the sum of squares is safe in the accumulation dtype.

    [M1] ms = (1/K) sum x^2           [M2] rrms = 1/sqrt(ms + eps)
    [M3] xhat = x*rrms                [M4] y = gamma*xhat
    [M5] dgamma = sum dy*xhat  (over rows)
    [M6] dx = rrms*(g - xhat*mean(g*xhat)),  g = gamma*dy, mean over the row

Shapes and dtypes: gamma is (K,) of the accumulation dtype, or None (meaning 1);
rrms is (R,) of the accumulation dtype; y and dx have x's dtype; dgamma is
always returned, (K,), accumulation dtype.
"""
from cubn.backend import get_array_module
from cubn.ref.common import acc_dtype


def rmsnorm_forward(x, gamma, eps):
    """Normalize each row of x (R, K) by its root mean square; return (y, rrms), rrms (R,)."""
    xp = get_array_module(x)
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc, copy=False)
    rrms = 1 / xp.sqrt(xp.square(xa).mean(axis=1) + acc(eps))                      # [M1] [M2]
    xhat = xa * rrms[:, None]                                                      # [M3]
    y = xhat if gamma is None else xhat * gamma                                    # [M4]
    return y.astype(x.dtype), rrms


def rmsnorm_backward(dy, x, gamma, rrms):
    """Gradients of rmsnorm_forward for upstream dy (R, K); return (dx, dgamma)."""
    acc = acc_dtype(x.dtype)
    dy = dy.astype(acc, copy=False)
    xhat = x.astype(acc, copy=False) * rrms[:, None]                               # [M3] recomputed
    dgamma = (dy * xhat).sum(axis=0)                                               # [M5]
    g = dy if gamma is None else dy * gamma                                        # dL/dxhat
    dx = rrms[:, None] * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))      # [M6]
    return dx.astype(x.dtype), dgamma
