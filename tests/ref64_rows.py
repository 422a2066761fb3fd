"""Independent float64 references for the row-normalization family.

Written straight from the papers' formulas with plain NumPy on float64 copies
of the inputs and two-pass statistics; nothing here is shared with cubn, so it
can judge cubn. Inputs are NumPy arrays of any float dtype; outputs are float64.

    LayerNorm     (Ba et al. 2016)          over the trailing ``normalized_ndim`` dims,
                                            gamma/beta shaped like those dims (per element)
    InstanceNorm  (Ulyanov et al. 2016)     x (N, C, *spatial), per (n, c), gamma/beta (C,)
    GroupNorm     (Wu & He 2018)            x (N, C, *spatial), per (n, group), gamma/beta (C,)
    RMSNorm       (Zhang & Sennrich 2019)   over the trailing dims, no centering, gamma per element

gamma/beta None mean 1 and 0. ``moments`` gives the statistics themselves.
"""
import numpy as np


def moments(x, axes):
    """Two-pass float64 mean and biased variance over ``axes`` (reduced axes dropped)."""
    x = np.array(x, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes)
    return mean.squeeze(axis=axes), var


def _normalize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over ``axes``, in float64."""
    x = np.array(x, dtype=np.float64)
    mean, var = moments(x, axes)
    return (x - np.expand_dims(mean, axes)) / np.sqrt(np.expand_dims(var, axes) + eps)


def _affine(xhat, gamma, beta):
    """gamma * xhat + beta; parameters already broadcastable against xhat."""
    y = xhat if gamma is None else xhat * np.asarray(gamma, dtype=np.float64)
    return y if beta is None else y + np.asarray(beta, dtype=np.float64)


def _per_channel(p, ndim):
    """A (C,) parameter shaped (C, 1, ..., 1) to broadcast over (N, C, *spatial)."""
    return None if p is None else np.reshape(p, (-1,) + (1,) * (ndim - 2))


def _trailing(x, ndim):
    return tuple(range(x.ndim - ndim, x.ndim))


def ln_ref(x, normalized_ndim, gamma=None, beta=None, eps=1e-5):
    """LayerNorm over the last ``normalized_ndim`` dims of x, affine per element."""
    return _affine(_normalize(x, _trailing(x, normalized_ndim), eps), gamma, beta)


def in_ref(x, gamma=None, beta=None, eps=1e-5):
    """InstanceNorm of x (N, C, *spatial): statistics per (n, c), affine per channel."""
    xhat = _normalize(x, tuple(range(2, x.ndim)), eps)
    return _affine(xhat, _per_channel(gamma, x.ndim), _per_channel(beta, x.ndim))


def gn_ref(x, G, gamma=None, beta=None, eps=1e-5):
    """GroupNorm of x (N, C, *spatial) with G groups of C/G consecutive channels, affine per channel."""
    xhat = _normalize(np.reshape(x, (x.shape[0], G, -1)), 2, eps).reshape(x.shape)
    return _affine(xhat, _per_channel(gamma, x.ndim), _per_channel(beta, x.ndim))


def rms_ref(x, normalized_ndim, gamma=None, eps=1e-5):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * gamma over the last ``normalized_ndim`` dims."""
    x = np.array(x, dtype=np.float64)
    ms = (x ** 2).mean(axis=_trailing(x, normalized_ndim), keepdims=True)
    return _affine(x / np.sqrt(ms + eps), gamma, None)
