"""Independent float64 references for BatchNorm and Batch Renorm, and inputs to feed them.

Written straight from the papers' formulas with plain NumPy on float64 copies
of the inputs and two-pass statistics (the mean first, then the mean of squared
deviations); nothing here is shared with cubn, so it can judge cubn.

x is a NumPy array (N, C, *spatial) of any float dtype, channel axis 1;
gamma, beta and the running statistics are (C,), gamma/beta None meaning 1 and
0. Outputs are float64.

    BatchNorm     (Ioffe & Szegedy 2015, Alg. 1)   mean, biased var over all axes but 1;
                  y = gamma*(x - mean)/sqrt(var + eps) + beta
    Batch Renorm  (Ioffe 2017, Alg. 1)             sigma_B = sqrt(var + eps),
                  r = clip(sigma_B/running_std, 1/rmax, rmax),
                  d = clip((mean - running_mean)/running_std, -dmax, dmax),
                  y = gamma*((x - mean)/sigma_B * r + d) + beta
"""
import numpy as np


def _per_channel(p, x, default):
    """A (C,) parameter (None -> ``default``) in float64, shaped to broadcast over x's channel axis."""
    p = np.full(x.shape[1], default) if p is None else np.asarray(p, dtype=np.float64)
    return p.reshape((1, -1) + (1,) * (x.ndim - 2))


def bn_train_ref(x, gamma=None, beta=None, eps=1e-5):
    """BatchNorm training forward: (y, mean, biased_var), mean and var of shape (C,)."""
    x = np.array(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    mean = x.sum(axis=axes) / m
    var = ((x - _per_channel(mean, x, 0.0)) ** 2).sum(axis=axes) / m
    return bn_eval_ref(x, gamma, beta, mean, var, eps), mean, var


def bn_eval_ref(x, gamma, beta, mean, var, eps=1e-5):
    """BatchNorm with given (running) statistics: gamma*(x - mean)/sqrt(var + eps) + beta."""
    x = np.array(x, dtype=np.float64)
    xhat = (x - _per_channel(mean, x, 0.0)) / np.sqrt(_per_channel(var, x, 1.0) + eps)
    return _per_channel(gamma, x, 1.0) * xhat + _per_channel(beta, x, 0.0)


def brn_train_ref(x, gamma, beta, running_mean, running_std, rmax, dmax, eps=1e-5):
    """Batch Renorm training forward: (y, mean, biased_var, r, d)."""
    _, mean, var = bn_train_ref(x, eps=eps)
    running_std = np.asarray(running_std, dtype=np.float64)
    r = np.clip(np.sqrt(var + eps) / running_std, 1 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, dtype=np.float64)) / running_std, -dmax, dmax)
    return brn_fixed_ref(x, gamma, beta, r, d, eps), mean, var, r, d


def brn_fixed_ref(x, gamma, beta, r, d, eps=1e-5):
    """Batch Renorm's y with r and d given: the function its backward differentiates (r, d constant)."""
    xhat, _, _ = bn_train_ref(x, eps=eps)
    renormed = xhat * _per_channel(r, xhat, 1.0) + _per_channel(d, xhat, 0.0)
    return _per_channel(gamma, xhat, 1.0) * renormed + _per_channel(beta, xhat, 0.0)


def random_batch(shape, dtype, seed=0, loc=3.0, scale=2.0):
    """Test inputs (x, gamma, beta, dy) for a (N, C, *spatial) batch.

    Each channel gets its own mean (loc + U(-2, 2)) and spread (scale * U(0.5, 1.5)),
    so a reduction over the wrong axes shows, and non-zero means expose cancellation.
    x and dy have ``dtype``; gamma and beta the accumulation dtype (float64 for
    float64, float32 otherwise).
    """
    rng = np.random.default_rng(seed)
    c = shape[1]
    acc = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    chan = (1, c) + (1,) * (len(shape) - 2)
    center = (loc + rng.uniform(-2, 2, c)).reshape(chan)
    spread = (scale * rng.uniform(0.5, 1.5, c)).reshape(chan)
    x = (center + spread * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, c).astype(acc)
    beta = rng.standard_normal(c).astype(acc)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy
