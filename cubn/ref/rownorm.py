"""Row normalization: LayerNorm, InstanceNorm and GroupNorm in one routine (NumPy twin).

Twin of ``kernels/rownorm.cu`` (not written yet; it will carry the same names and
[E#] tags), launched by ``cubn/cuda/rownorm.py``.

Layout: ``x`` is (N, C, S), C-contiguous. The C channels form ``groups`` groups
of C/groups channels; row (n, g) is the contiguous block of K = (C/groups)*S
values ``x[n, g*C/groups:(g+1)*C/groups, :]``. Statistics are per row, the
affine per channel (Ioffe & Szegedy's formulas, applied per row):

    [E1] mean = (1/K) sum x            [E2] var = (1/K) sum (x-mean)^2   (biased, two-pass)
    [E3] rstd = 1/sqrt(var + eps)      [E4] xhat = (x-mean)*rstd
    [E5] y = gamma[c]*xhat + beta[c]
    [E6] dbeta[c] = sum dy             [E7] dgamma[c] = sum dy*xhat      (over n and s)
    [E8] dx = rstd*(g - mean(g) - xhat*mean(g*xhat)),  g = gamma[c]*dy, means over the row

The three norms are three views of their input, as chainer's
``group_normalization`` reshapes GroupNorm into a row normalization:

    LayerNorm(normalized_shape)  x viewed as (R, K, 1), groups=1: R = prod(leading dims),
                                 K = prod(normalized_shape). Each "channel" is one element
                                 of the row, so per-channel affine is LN's per-element affine.
    InstanceNorm                 (N, C, S), groups=C: one row per (n, c), K = S.
    GroupNorm(G)                 (N, C, S), groups=G: K = (C/G)*S.

Shapes and dtypes: gamma, beta are (C,) of the accumulation dtype, or None
(meaning 1 and 0); mean, rstd are (N, groups) of the accumulation dtype; y and
dx have x's dtype; dgamma and dbeta are always returned, (C,), accumulation dtype.
"""
from cubn.backend import get_array_module
from cubn.ref.batchnorm import _mean_or_nan
from cubn.ref.common import acc_dtype, channel_dot, channel_sum, row_dot, row_sum


def _rows(a, groups, dtype):
    """(N, C, S) -> (N, groups, K) in ``dtype``: row (n, g) is contiguous, so this is a view plus a cast."""
    return a.reshape(a.shape[0], groups, -1).astype(dtype, copy=False)


def _per_position(v, S):
    """A per-channel (C,) vector spread over each sample's C*S positions, (1, C*S): it broadcasts along
    the contiguous last axis (a (C, 1) column would make NumPy loop over runs of S values, of 1 for LN)."""
    xp = get_array_module(v)
    return xp.repeat(v, S)[None]


def rownorm_forward(x, gamma, beta, groups, eps):
    """Normalize each row (n, g) of x (N, C, S); return (y, mean, rstd), mean/rstd (N, groups)."""
    xp = get_array_module(x)
    acc = acc_dtype(x.dtype)
    (N, C, S), xr = x.shape, _rows(x, groups, acc)
    K = xr.shape[2]
    mean = row_sum(xr) / K                                                         # [E1]
    d = xr - mean[..., None]
    # [E2] two-pass: sum of squared deviations. Subtracting mean(d)^2 (zero in exact
    # arithmetic) cancels the rounding error of the stored mean, which would otherwise
    # add its square to var: rows of 1e4 + 0.01*randn in float32 get var up to ~1% high
    # (the "corrected two-pass" algorithm, Chan, Golub & LeVeque 1983, eq. 1.7). Both
    # terms read deviations, never raw x, so this is not E[x^2] - E[x]^2. The clamp
    # keeps a rounding-negative var of a constant row from reaching sqrt.
    var = xp.maximum(row_dot(d, d) / K - xp.square(row_sum(d) / K), 0)
    rstd = 1 / xp.sqrt(var + acc(eps))                                             # [E3]
    d *= rstd[..., None]                                                           # [E4] xhat, in place
    y = d.reshape(N, C * S)
    if gamma is not None:
        y *= _per_position(gamma, S)                                               # [E5]
    if beta is not None:
        y += _per_position(beta, S)
    return y.reshape(x.shape).astype(x.dtype, copy=False), _mean_or_nan(mean, var), rstd


def rownorm_backward(dy, x, gamma, mean, rstd, groups):
    """Gradients of rownorm_forward for upstream dy (N, C, S); return (dx, dgamma, dbeta)."""
    acc = acc_dtype(x.dtype)
    (N, C, S), dy = x.shape, dy.astype(acc, copy=False)
    xhat = _rows(x, groups, acc) - mean[..., None]                                 # [E4] recomputed
    xhat *= rstd[..., None]
    dbeta = channel_sum(dy)                                                        # [E6]
    dgamma = channel_dot(dy, xhat.reshape(x.shape))                               # [E7]
    g = dy.reshape(N, C * S) * (1 if gamma is None else _per_position(gamma, S))   # dL/dxhat
    g = g.reshape(xhat.shape)
    K = xhat.shape[2]
    proj = row_dot(g, xhat)[..., None] / K                                         # mean(g*xhat)
    xhat *= proj                                                                   # [E8], in place
    xhat += (row_sum(g) / K)[..., None]                                            # mean(g)
    g -= xhat
    g *= rstd[..., None]
    return g.reshape(x.shape).astype(x.dtype, copy=False), dgamma, dbeta
