"""Kernel-API tests of rmsnorm_forward/rmsnorm_backward on the (R, K) view.

RMSNorm over the trailing ``ndim`` dims is the kernel on x reshaped to
(prod(leading), prod(trailing)); results are compared with ``rms_ref``, the
formula y = x / sqrt(mean(x^2) + eps) * gamma in float64.
"""
import math

import numpy as np
import pytest

from cubn.ref.common import acc_dtype
from cubn.ref.rmsnorm import rmsnorm_backward, rmsnorm_forward
from gradcheck import assert_grads_close, numerical_grads
from ref64_rows import rms_ref
from test_ref_rownorm import DTYPES, EPS, params, run_on, sample
from tolerance import TOL, assert_close

JIT_TWIN = "rmsnorm"  # conftest: every test here also runs on cubn.jit.rmsnorm (device "jit")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, ndim", [((4, 10), 1), ((3, 5, 6), 1), ((3, 5, 6), 2),
                                         ((2, 3, 4, 5), 2), ((2, 3, 2, 3, 4), 3)])
def test_rmsnorm_matches_formula(device, dtype, shape, ndim):
    x = sample(shape, dtype, 0.7, 1.0)
    norm_shape = shape[-ndim:]
    K = math.prod(norm_shape)
    gamma = params(K, dtype)[0]
    y, rrms = run_on(device, rmsnorm_forward, x.reshape(-1, K), gamma, EPS)
    acc = acc_dtype(dtype)
    assert (y.dtype, rrms.dtype, rrms.shape) == (dtype, acc, (x.size // K,))
    assert_close(y.reshape(shape), rms_ref(x, ndim, gamma.reshape(norm_shape), EPS), dtype, "y")
    x64 = x.reshape(-1, K).astype(np.float64)
    assert_close(rrms, 1 / np.sqrt((x64 ** 2).mean(axis=1) + EPS), acc, "rrms")


@pytest.mark.parametrize("dtype", DTYPES)
def test_none_gamma_means_one(device, dtype):
    x, dy = sample((3, 8), dtype), sample((3, 8), dtype, 0, 1, seed=2)
    plain = run_on(device, rmsnorm_forward, x, None, EPS)
    explicit = run_on(device, rmsnorm_forward, x, np.ones(8, acc_dtype(dtype)), EPS)
    plain += run_on(device, rmsnorm_backward, dy, x, None, plain[1])
    explicit += run_on(device, rmsnorm_backward, dy, x, np.ones(8, acc_dtype(dtype)), explicit[1])
    for name, a, b in zip(["y", "rrms", "dx", "dgamma"], plain, explicit):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_dtypes_and_shapes(device, dtype):
    x, dy = sample((3, 8), dtype), sample((3, 8), dtype, 0, 1, seed=2)
    rrms = run_on(device, rmsnorm_forward, x, None, EPS)[1]
    dx, dgamma = run_on(device, rmsnorm_backward, dy, x, None, rrms)
    acc = np.dtype(acc_dtype(dtype))
    assert (dx.dtype, dx.shape, dgamma.dtype, dgamma.shape) == (dtype, x.shape, acc, (8,))


@pytest.mark.parametrize("shape", [(3, 5), (2, 7)])
def test_gradients_match_finite_differences(device, shape):
    x, gamma = sample(shape, np.float64), params(shape[1], np.float64)[0]
    dy = sample(shape, np.float64, 0, 1, seed=2)
    numeric = numerical_grads(lambda *a: run_on(device, rmsnorm_forward, *a, EPS)[0], [x, gamma], dy)
    rrms = run_on(device, rmsnorm_forward, x, gamma, EPS)[1]
    assert_grads_close(run_on(device, rmsnorm_backward, dy, x, gamma, rrms), numeric, ["x", "gamma"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_identities(device, dtype):
    """dgamma = sum dy*xhat; with eps=0 RMSNorm is scale invariant, so dx is orthogonal to x."""
    x, dy = sample((4, 12), dtype), sample((4, 12), dtype, 0, 1, seed=2)
    gamma = params(12, dtype)[0]
    rrms = run_on(device, rmsnorm_forward, x, gamma, 0.0)[1]
    dx, dgamma = run_on(device, rmsnorm_backward, dy, x, gamma, rrms)
    x64, dx64, dy64 = (a.astype(np.float64) for a in (x, dx, dy))
    assert_close(dgamma, (dy64 * rms_ref(x, 1, eps=0.0)).sum(axis=0), acc_dtype(dtype), "dgamma")
    bound = TOL[np.dtype(dtype)][1] * np.abs(dx64 * x64).sum(axis=1)
    assert (np.abs((dx64 * x64).sum(axis=1)) <= bound).all(), "dx is not orthogonal to x"


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scale", [1.0, 1e3], ids=["unit", "ms-beyond-float16"])
def test_backward_matches_float64(device, dtype, scale):
    """float16/32 against the float64 path (checked by finite differences); scale=1e3 gives
    mean(x^2) ~ 1e6, beyond the float16 range, which must stay finite."""
    x, dy = sample((4, 64), dtype, 0, scale), sample((4, 64), dtype, 0, scale, seed=2)
    gamma = params(64, dtype)[0]
    y, rrms = run_on(device, rmsnorm_forward, x, gamma, EPS)
    assert_close(y, rms_ref(x, 1, gamma, EPS), dtype, "y")
    grads = run_on(device, rmsnorm_backward, dy, x, gamma, rrms)
    x64, dy64, gamma64 = (a.astype(np.float64) for a in (x, dy, gamma))
    expected = rmsnorm_backward(dy64, x64, gamma64, rmsnorm_forward(x64, gamma64, EPS)[1])
    for name, a, e, tol in zip(["dx", "dgamma"], grads, expected, [dtype, acc_dtype(dtype)]):
        assert_close(a, e, tol, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_row_gives_zero_and_finite_gradients(device, dtype):
    x = sample((3, 6), dtype)
    x[1] = 0
    gamma = params(6, dtype)[0]
    y, rrms = run_on(device, rmsnorm_forward, x, gamma, EPS)
    assert not y[1].any()
    grads = run_on(device, rmsnorm_backward, sample(x.shape, dtype, 0, 1, seed=2), x, gamma, rrms)
    assert all(np.isfinite(g).all() for g in grads)
