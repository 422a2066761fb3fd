"""Batch Renorm's NumPy twin (cubn/ref/batchrenorm.py) at the kernel API: x is (N, C, S).

The forward is judged by the paper's formula in ref64_batch.py; the backward,
where r and d are stop-gradient, by finite differences of a float64 composition
in which r and d are held constant (brn_fixed_ref).
"""
import numpy as np
import pytest

from conftest import to_dev
from gradcheck import assert_grads_close, numerical_grads
from ref64_batch import bn_train_ref, brn_fixed_ref, brn_train_ref, random_batch
from tolerance import assert_close

from cubn.backend import to_numpy
from cubn.ref.batchnorm import batchnorm_backward, batchnorm_forward
from cubn.ref.batchrenorm import batchrenorm_backward, batchrenorm_forward
from cubn.ref.common import acc_dtype

DTYPES = [np.float16, np.float32, np.float64]
EPS = 1e-5
# conftest: every test here also runs on cubn.jit (device "jit"), its BatchNorm beside its Batch Renorm
JIT_TWIN = ("batchrenorm", "batchnorm")
RMAX, DMAX = 2.0, 0.5  # bounds exact in every dtype, so clipped values compare with ==
# Per channel, cycled: the unclipped sigma_B/running_std and (mean - running_mean)/running_std,
# above the upper bound, below the lower bound, inside the bounds.
RATIO = [4.0, 0.25, 1.25]
SHIFT = [1.0, -1.0, 0.2]


def on(device, *arrays):
    return [to_dev(a, device) for a in arrays]


def running_stats(x):
    """(running_mean, running_std) for x such that r and d clip in channels 0, 1 (mod 3), not in 2."""
    _, mean, var = bn_train_ref(x, eps=EPS)
    running_std = np.sqrt(var + EPS) / np.resize(RATIO, mean.shape)
    running_mean = mean - np.resize(SHIFT, mean.shape) * running_std
    acc = acc_dtype(x.dtype)
    return running_mean.astype(acc), running_std.astype(acc)


@pytest.mark.parametrize("shape", [(4, 3, 10), (3, 7, 143), (5, 1, 9), (6, 4, 1), (2, 3, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_paper_formula(device, dtype, shape):
    x, gamma, beta, _ = random_batch(shape, dtype)
    running_mean, running_std = running_stats(x)
    out = batchrenorm_forward(*on(device, x, gamma, beta, running_mean, running_std), RMAX, DMAX, EPS)
    y, mean, var, rstd, r, d = out
    y64, mean64, var64, r64, d64 = brn_train_ref(x, gamma, beta, running_mean, running_std,
                                                 RMAX, DMAX, EPS)
    acc = acc_dtype(dtype)
    assert_close(y, y64, dtype, "y")
    for name, a, ref in [("mean", mean, mean64), ("var", var, var64),
                         ("rstd", rstd, 1 / np.sqrt(var64 + EPS)), ("r", r, r64), ("d", d, d64)]:
        assert_close(a, ref, acc, name)
    assert y.dtype == dtype and all(a.dtype == acc for a in out[1:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_r_and_d_clip_at_the_bounds(device, dtype):
    x, gamma, beta, _ = random_batch((4, 3, 10), dtype)
    *_, r, d = batchrenorm_forward(*on(device, x, gamma, beta, *running_stats(x)), RMAX, DMAX, EPS)
    r, d = to_numpy(r), to_numpy(d)
    assert r[0] == RMAX and r[1] == 1 / RMAX and 1 / RMAX < r[2] < RMAX, r
    assert d[0] == DMAX and d[1] == -DMAX and -DMAX < d[2] < DMAX, d


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmax_1_dmax_0_is_exactly_batchnorm(device, dtype):
    # the running stats are far from the batch's: only the clipping makes r = 1, d = 0
    x, gamma, beta, dy = random_batch((3, 5, 17), dtype)
    x, gamma, beta, dy, running_mean, running_std = on(device, x, gamma, beta, dy, *running_stats(x))
    y, mean, var, rstd, r, d = batchrenorm_forward(x, gamma, beta, running_mean, running_std,
                                                   1.0, 0.0, EPS)
    assert (to_numpy(r) == 1).all() and (to_numpy(d) == 0).all()
    pairs = list(zip((y, mean, var, rstd), batchnorm_forward(x, gamma, beta, EPS)))
    pairs += zip(batchrenorm_backward(dy, x, gamma, mean, rstd, r, d),
                 batchnorm_backward(dy, x, gamma, mean, rstd))
    for a, b in pairs:
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_beta_none_mean_one_and_zero(device, dtype):
    x, gamma, beta, dy = random_batch((3, 4, 6), dtype)
    x, dy, ones, zeros, running_mean, running_std = on(
        device, x, dy, np.ones_like(gamma), np.zeros_like(beta), *running_stats(x))
    full = batchrenorm_forward(x, ones, zeros, running_mean, running_std, RMAX, DMAX, EPS)
    none = batchrenorm_forward(x, None, None, running_mean, running_std, RMAX, DMAX, EPS)
    _, mean, _, rstd, r, d = full
    pairs = list(zip(full, none))
    pairs += zip(batchrenorm_backward(dy, x, ones, mean, rstd, r, d),
                 batchrenorm_backward(dy, x, None, mean, rstd, r, d))
    for a, b in pairs:
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("shape", [(3, 3, 5), (2, 4, 3)])
def test_backward_matches_finite_differences_with_r_d_constant(device, shape):
    x, gamma, beta, dy = random_batch(shape, np.float64, seed=1)
    x_d, gamma_d, beta_d, dy_d = on(device, x, gamma, beta, dy)
    _, mean, _, rstd, r, d = batchrenorm_forward(x_d, gamma_d, beta_d, *on(device, *running_stats(x)),
                                                 RMAX, DMAX, EPS)
    r_h, d_h = to_numpy(r), to_numpy(d)
    numeric = numerical_grads(lambda x, g, b: brn_fixed_ref(x, g, b, r_h, d_h, EPS),
                              [x, gamma, beta], dy)
    analytic = batchrenorm_backward(dy_d, x_d, gamma_d, mean, rstd, r, d)
    assert_grads_close([to_numpy(g) for g in analytic], numeric, ["x", "gamma", "beta"])
