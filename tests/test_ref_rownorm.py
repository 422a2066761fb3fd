"""Kernel-API tests of rownorm_forward/rownorm_backward (LayerNorm, InstanceNorm, GroupNorm).

Each test builds NumPy inputs, reshapes them to the view the ops layer would
pass (LN: (R, K, 1), IN: (N, C, S) with groups=C, GN: (N, C, S) with groups=G),
runs the kernel API on ``device`` and compares with the independent float64
reference in ``ref64_rows``. Low-precision inputs are rounded first and the
reference sees the same rounded values, so only the kernel's own error counts.
"""
import math

import numpy as np
import pytest

from conftest import to_dev
from cubn.backend import device_of, to_numpy
from cubn.ref.common import acc_dtype
from cubn.ref.rownorm import rownorm_backward, rownorm_forward
from gradcheck import assert_grads_close, numerical_grads
from ref64_rows import gn_ref, in_ref, ln_ref, moments
from tolerance import TOL, assert_close

JIT_TWIN = "rownorm"  # conftest: every test here also runs on cubn.jit.rownorm (device "jit")
EPS = 1e-5
DTYPES = [np.float16, np.float32, np.float64]


def sample(shape, dtype, loc=-2.3, scale=0.5, seed=0):
    """loc + scale*randn rounded to ``dtype``; a non-zero mean exposes cancellation."""
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def run_on(device, fn, *args):
    """Call a kernel-API function with its array arguments on ``device``; results come back as NumPy."""
    out = fn(*[to_dev(a, device) if isinstance(a, np.ndarray) else a for a in args])
    assert all(device_of(r) == device for r in out), f"{fn.__name__} left the device {device}"
    return [to_numpy(r) for r in out]


def params(C, dtype, seed=1):
    """Per-channel gamma (around 1) and beta in the accumulation dtype of ``dtype``."""
    rng = np.random.default_rng(seed)
    acc = acc_dtype(dtype)
    return (1 + 0.5 * rng.standard_normal(C)).astype(acc), rng.standard_normal(C).astype(acc)


def _view(shape):
    """(N, C, *spatial) -> the kernel's (N, C, S)."""
    return shape[0], shape[1], math.prod(shape[2:])


def _check_forward(device, x, view, groups, gamma, beta, expected):
    """rownorm_forward on x viewed as ``view``: y against ``expected``, mean/rstd against row moments."""
    y, mean, rstd = run_on(device, rownorm_forward, x.reshape(view), gamma, beta, groups, EPS)
    acc = acc_dtype(x.dtype)
    assert (y.dtype, mean.dtype, rstd.dtype) == (x.dtype, acc, acc)
    ref_mean, ref_var = moments(x.reshape(view[0], groups, -1), 2)
    assert_close(y.reshape(x.shape), expected, x.dtype, "y")
    assert_close(mean, ref_mean, acc, "mean")
    assert_close(rstd, 1 / np.sqrt(ref_var + EPS), acc, "rstd")


# ---------------------------------------------------------------- forward against ref64

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, ndim", [((4, 10), 1), ((3, 5, 6), 1), ((3, 5, 6), 2),
                                         ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 3),
                                         ((2, 2, 3, 2, 5), 2), ((2, 3, 2, 3, 4), 3)])
def test_layernorm_matches_ref64(device, dtype, shape, ndim):
    x = sample(shape, dtype)
    norm_shape = shape[-ndim:]
    K = math.prod(norm_shape)
    gamma, beta = params(K, dtype)
    expected = ln_ref(x, ndim, gamma.reshape(norm_shape), beta.reshape(norm_shape), EPS)
    _check_forward(device, x, (x.size // K, K, 1), 1, gamma, beta, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 4, 2, 3, 3), (3, 1, 7)])
def test_instancenorm_matches_ref64(device, dtype, shape):
    x = sample(shape, dtype)
    gamma, beta = params(shape[1], dtype)
    _check_forward(device, x, _view(shape), shape[1], gamma, beta, in_ref(x, gamma, beta, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, G", [((2, 6, 5), 3), ((1, 256, 1, 1), 32), ((3, 6, 5, 7), 3),
                                      ((2, 4, 3, 3), 1), ((2, 8, 2, 2, 2), 4), ((2, 5, 4), 5)])
def test_groupnorm_matches_ref64(device, dtype, shape, G):
    x = sample(shape, dtype)
    gamma, beta = params(shape[1], dtype)
    _check_forward(device, x, _view(shape), G, gamma, beta, gn_ref(x, G, gamma, beta, EPS))


# ---------------------------------------------------------------- one family, several layouts

def _both_layouts(device, x, dy, groups, gamma, beta, view_b, groups_b, gamma_b, beta_b):
    """Forward and backward of the same data as (N, C, S) and as ``view_b``:
    two lists [y, mean, rstd, dx, dgamma, dbeta], y and dx in x's shape."""
    out = []
    for view, G, g, b in ((x.shape, groups, gamma, beta), (view_b, groups_b, gamma_b, beta_b)):
        y, mean, rstd = run_on(device, rownorm_forward, x.reshape(view), g, b, G, EPS)
        dx, dgamma, dbeta = run_on(device, rownorm_backward, dy.reshape(view), x.reshape(view),
                                   g, mean, rstd, G)
        out.append([y.reshape(x.shape), mean, rstd, dx.reshape(x.shape), dgamma, dbeta])
    return out


def _assert_same_results(a, b, dtype):
    acc = acc_dtype(dtype)
    for name, u, v, tol in zip(["y", "mean", "rstd", "dx", "dgamma", "dbeta"], a, b,
                               [dtype, acc, acc, dtype, acc, acc]):
        assert_close(u, v, tol, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_one_group_is_layernorm(device, dtype):
    """GN(G=1) with per-channel affine is LN over (C, S) with that affine repeated per element."""
    N, C, S = 2, 4, 6
    x, dy = sample((N, C, S), dtype), sample((N, C, S), dtype, 0, 1, seed=2)
    gamma, beta = params(C, dtype)
    gn, ln = _both_layouts(device, x, dy, 1, gamma, beta,
                           (N, C * S, 1), 1, np.repeat(gamma, S), np.repeat(beta, S))
    assert_close(gn[0], ln_ref(x, 2, gamma[:, None], beta[:, None], EPS), dtype, "y vs ln_ref")
    ln[4:] = [p.reshape(C, S).sum(axis=1) for p in ln[4:]]  # per-element dgamma/dbeta -> per channel
    _assert_same_results(gn, ln, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_groupnorm_c_groups_is_instancenorm(device, dtype):
    """GN(G=C) is IN; checked against the batch folded into channels: (1, N*C, S), groups=N*C."""
    N, C, S = 3, 4, 5
    x, dy = sample((N, C, S), dtype), sample((N, C, S), dtype, 0, 1, seed=2)
    gamma, beta = params(C, dtype)
    gn, inst = _both_layouts(device, x, dy, C, gamma, beta,
                             (1, N * C, S), N * C, np.tile(gamma, N), np.tile(beta, N))
    assert_close(gn[0], in_ref(x, gamma, beta, EPS), dtype, "y vs in_ref")
    inst[1:3] = [s.reshape(N, C) for s in inst[1:3]]
    inst[4:] = [p.reshape(N, C).sum(axis=0) for p in inst[4:]]  # per (n, c) -> per channel
    _assert_same_results(gn, inst, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_none_affine_means_one_and_zero(device, dtype):
    N, C, S, G = 2, 6, 5, 3
    x, dy = sample((N, C, S), dtype), sample((N, C, S), dtype, 0, 1, seed=2)
    ones, zeros = np.ones(C, acc_dtype(dtype)), np.zeros(C, acc_dtype(dtype))
    plain = run_on(device, rownorm_forward, x, None, None, G, EPS)
    explicit = run_on(device, rownorm_forward, x, ones, zeros, G, EPS)
    plain += run_on(device, rownorm_backward, dy, x, None, plain[1], plain[2], G)
    explicit += run_on(device, rownorm_backward, dy, x, ones, explicit[1], explicit[2], G)
    for name, a, b in zip(["y", "mean", "rstd", "dx", "dgamma", "dbeta"], plain, explicit):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_output_dtypes_and_shapes(device, dtype, affine):
    N, C, S, G = 2, 6, 5, 3
    x, dy = sample((N, C, S), dtype), sample((N, C, S), dtype, 0, 1, seed=2)
    gamma, beta = params(C, dtype) if affine else (None, None)
    y, mean, rstd = run_on(device, rownorm_forward, x, gamma, beta, G, EPS)
    dx, dgamma, dbeta = run_on(device, rownorm_backward, dy, x, gamma, mean, rstd, G)
    acc = np.dtype(acc_dtype(dtype))
    assert (y.dtype, y.shape, dx.dtype, dx.shape) == (dtype, x.shape, dtype, x.shape)
    assert [(a.dtype, a.shape) for a in (mean, rstd)] == [(acc, (N, G))] * 2
    assert [(a.dtype, a.shape) for a in (dgamma, dbeta)] == [(acc, (C,))] * 2


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("view, groups", [((2, 3, 4), 1), ((2, 4, 3), 2), ((2, 3, 4), 3), ((3, 5, 1), 1)])
def test_gradients_match_finite_differences(device, view, groups):
    x = sample(view, np.float64)
    gamma, beta = params(view[1], np.float64)
    dy = sample(view, np.float64, 0, 1, seed=2)
    numeric = numerical_grads(lambda *a: run_on(device, rownorm_forward, *a, groups, EPS)[0],
                              [x, gamma, beta], dy)
    _, mean, rstd = run_on(device, rownorm_forward, x, gamma, beta, groups, EPS)
    analytic = run_on(device, rownorm_backward, dy, x, gamma, mean, rstd, groups)
    assert_grads_close(analytic, numeric, ["x", "gamma", "beta"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups", [((2, 6, 5), 3), ((3, 4, 2, 3), 1), ((2, 3, 4), 3)])
def test_backward_identities(device, dtype, shape, groups):
    """dbeta = sum dy, dgamma = sum dy*xhat; with constant gamma dx sums to zero over each row
    and is orthogonal to xhat (exactly so with eps=0, which this test uses)."""
    N, C = shape[:2]
    acc = acc_dtype(dtype)
    x, dy = sample(shape, dtype).reshape(N, C, -1), sample(shape, dtype, 0, 1, seed=2).reshape(N, C, -1)
    gamma = np.full(C, 1.7, acc)
    _, mean, rstd = run_on(device, rownorm_forward, x, gamma, None, groups, 0.0)
    dx, dgamma, dbeta = run_on(device, rownorm_backward, dy, x, gamma, mean, rstd, groups)
    xhat, dy64 = gn_ref(x, groups, eps=0.0), dy.astype(np.float64)
    assert_close(dbeta, dy64.sum(axis=(0, 2)), acc, "dbeta")
    assert_close(dgamma, (dy64 * xhat).sum(axis=(0, 2)), acc, "dgamma")
    rows = [a.astype(np.float64).reshape(N, groups, -1) for a in (dx, xhat)]
    bound = TOL[np.dtype(dtype)][1] * np.abs(rows[0]).sum(axis=2)
    assert (np.abs(rows[0].sum(axis=2)) <= bound).all(), "dx does not sum to zero over a row"
    assert (np.abs((rows[0] * rows[1]).sum(axis=2)) <= bound).all(), "dx is not orthogonal to xhat"


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("loc, scale, dy_scale", [(-2.3, 0.5, 1.0), (0.0, 1e4, 1e4)],
                         ids=["offset", "var-beyond-float16"])
def test_backward_matches_float64(device, dtype, loc, scale, dy_scale):
    """float16/32 gradients against the float64 path (itself checked by finite differences).
    scale=1e4 gives rows whose variance (~1e8) exceeds the float16 range: all must stay finite."""
    shape, G = (2, 4, 64), 2
    x, dy = sample(shape, dtype, loc, scale), sample(shape, dtype, 0, dy_scale, seed=2)
    gamma, beta = params(shape[1], dtype)
    _check_forward(device, x, shape, G, gamma, beta, gn_ref(x, G, gamma, beta, EPS))
    _, mean, rstd = run_on(device, rownorm_forward, x, gamma, beta, G, EPS)
    grads = run_on(device, rownorm_backward, dy, x, gamma, mean, rstd, G)
    x64, dy64, gamma64 = (a.astype(np.float64) for a in (x, dy, gamma))
    _, mean64, rstd64 = rownorm_forward(x64, gamma64, None, G, EPS)
    expected = rownorm_backward(dy64, x64, gamma64, mean64, rstd64, G)
    for name, a, e, tol in zip(["dx", "dgamma", "dbeta"], grads, expected, [dtype, acc_dtype(dtype)] * 2):
        assert_close(a, e, tol, name)


# ---------------------------------------------------------------- numerical robustness

def test_large_offset_float32_variance(device):
    """1e4 + 0.01*randn: the rounded float32 mean is off by up to half an ulp of 1e4 (~5e-4),
    which a plain two-pass variance (~1e-4) would feel; var must be right to 1e-3 relative."""
    x = sample((8, 2, 100), np.float32, 1e4, 0.01)
    y, mean, rstd = run_on(device, rownorm_forward, x, None, None, 2, EPS)
    dy = sample(x.shape, np.float32, 0, 1, seed=2)
    dx = run_on(device, rownorm_backward, dy, x, None, mean, rstd, 2)[0]
    _, ref_var = moments(x.reshape(8, 2, -1), 2)
    np.testing.assert_allclose(1 / rstd.astype(np.float64) ** 2 - EPS, ref_var, rtol=1e-3)
    assert np.isfinite(y).all() and np.isfinite(dx).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows_give_beta_exactly(device, dtype):
    """var = 0, so xhat = 0 and y = beta bit for bit; gradients stay finite (rstd = 1/sqrt(eps)).
    The constants are exact in float16 and their sums exact, so the mean is exact too."""
    N, C, S, G = 3, 4, 5, 2
    consts = np.array([[-3.25, 0.5], [7.0, 1e3], [0.0, -0.125]])
    x = np.repeat(consts, C // G * S, axis=1).reshape(N, C, S).astype(dtype)
    gamma, beta = params(C, dtype)
    y, mean, rstd = run_on(device, rownorm_forward, x, gamma, beta, G, EPS)
    np.testing.assert_array_equal(y, np.broadcast_to(beta.astype(dtype)[:, None], y.shape))
    grads = run_on(device, rownorm_backward, sample(x.shape, dtype, 0, 1, seed=2), x, gamma, mean, rstd, G)
    assert all(np.isfinite(g).all() for g in grads)


def test_long_row_float32_matches_ref64(device):
    """2**21 values per row: a naive running sum in float32 would drift; pairwise/tree sums must not."""
    x = sample((2, 1, 2 ** 21), np.float32, 3.0, 1.0)
    gamma, beta = params(1, np.float32)
    _check_forward(device, x, x.shape, 1, gamma, beta, gn_ref(x, 1, gamma, beta, EPS))
