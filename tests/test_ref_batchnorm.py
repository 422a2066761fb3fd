"""BatchNorm's NumPy twin (cubn/ref/batchnorm.py) at the kernel API: x is (N, C, S).

Forward results are judged by the float64 reference in ref64_batch.py under the
tolerance table; gradients by float64 finite differences of sum(y * dy) with a
random dy. Every test runs on the NumPy path and, where a GPU answers, on CuPy.
"""
import numpy as np
import pytest

from conftest import to_dev
from gradcheck import assert_grads_close, numerical_grads
from ref64_batch import bn_eval_ref, bn_train_ref, random_batch
from tolerance import TOL, assert_close

from cubn.backend import to_numpy
from cubn.ref.batchnorm import (batchnorm_backward, batchnorm_forward, batchnorm_inference,
                                batchnorm_inference_backward)
from cubn.ref.common import acc_dtype

DTYPES = [np.float16, np.float32, np.float64]
SHAPES = [(4, 3, 10), (3, 7, 143), (5, 1, 9), (6, 4, 1), (2, 5, 8), (2, 3, 1)]
JIT_TWIN = "batchnorm"  # conftest: every test here also runs on cubn.jit.batchnorm (device "jit")
EPS = 1e-5


def on(device, *arrays):
    return [to_dev(a, device) for a in arrays]


def running_stats(x, seed=5):
    """Plausible running mean and var (C,) for x, in the accumulation dtype."""
    rng = np.random.default_rng(seed)
    _, mean, var = bn_train_ref(x)
    acc = acc_dtype(x.dtype)
    return ((mean + rng.normal(0, 0.5, mean.shape)).astype(acc),
            (var * rng.uniform(0.5, 2.0, var.shape)).astype(acc))


def train_grads(device, x, gamma, beta, dy, eps=EPS):
    """(dx, dgamma, dbeta) of the training forward, as NumPy arrays."""
    x, gamma, beta, dy = on(device, x, gamma, beta, dy)
    _, mean, _, rstd = batchnorm_forward(x, gamma, beta, eps)
    return [to_numpy(g) for g in batchnorm_backward(dy, x, gamma, mean, rstd)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_ref64(device, dtype, shape):
    x, gamma, beta, _ = random_batch(shape, dtype)
    y, mean, var, rstd = batchnorm_forward(*on(device, x, gamma, beta), EPS)
    y64, mean64, var64 = bn_train_ref(x, gamma, beta, EPS)
    acc = acc_dtype(dtype)
    assert_close(y, y64, dtype, "y")
    assert_close(mean, mean64, acc, "mean")
    assert_close(var, var64, acc, "var")
    assert_close(rstd, 1 / np.sqrt(var64 + EPS), acc, "rstd")


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtypes_and_shapes(device, dtype):
    x, gamma, beta, dy = on(device, *random_batch((3, 2, 5), dtype))
    y, mean, var, rstd = batchnorm_forward(x, gamma, beta, EPS)
    dx, dgamma, dbeta = batchnorm_backward(dy, x, gamma, mean, rstd)
    y_eval = batchnorm_inference(x, gamma, beta, mean, var, EPS)
    dx_eval, dgamma_eval, dbeta_eval = batchnorm_inference_backward(dy, x, gamma, mean, var, EPS)
    for a in (y, dx, y_eval, dx_eval):
        assert a.dtype == dtype and a.shape == x.shape
    for a in (mean, var, rstd, dgamma, dbeta, dgamma_eval, dbeta_eval):
        assert a.dtype == acc_dtype(dtype) and a.shape == (2,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_beta_none_mean_one_and_zero(device, dtype):
    x, gamma, beta, dy = on(device, *random_batch((3, 4, 6), dtype))
    ones, zeros = gamma * 0 + 1, beta * 0
    mean, var = on(device, *running_stats(to_numpy(x)))
    for given, none in [((ones, zeros), (None, None)), ((ones, beta), (None, beta)),
                        ((gamma, zeros), (gamma, None))]:
        y, mean_b, _, rstd = batchnorm_forward(x, *given, EPS)
        pairs = [(y, batchnorm_forward(x, *none, EPS)[0]),
                 (batchnorm_inference(x, *given, mean, var, EPS),
                  batchnorm_inference(x, *none, mean, var, EPS))]
        pairs += zip(batchnorm_backward(dy, x, given[0], mean_b, rstd),
                     batchnorm_backward(dy, x, none[0], mean_b, rstd))
        pairs += zip(batchnorm_inference_backward(dy, x, given[0], mean, var, EPS),
                     batchnorm_inference_backward(dy, x, none[0], mean, var, EPS))
        for a, b in pairs:
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_affine_gives_zero_mean_unit_biased_variance(device, dtype):
    # eps=0 and M = 18: normalizing by the unbiased variance would be 6% off
    x, *_ = random_batch((2, 3, 9), dtype)
    y = to_numpy(batchnorm_forward(to_dev(x, device), None, None, 0.0)[0]).astype(np.float64)
    assert_close(y.mean(axis=(0, 2)), np.zeros(3), dtype, "channel mean of y")
    assert_close(y.var(axis=(0, 2)), np.ones(3), dtype, "biased channel variance of y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_matches_formula_and_folded_affine(device, dtype):
    x, gamma, beta, _ = random_batch((4, 3, 11), dtype)
    mean, var = running_stats(x)
    y = batchnorm_inference(*on(device, x, gamma, beta, mean, var), EPS)
    assert_close(y, bn_eval_ref(x, gamma, beta, mean, var, EPS), dtype, "y vs formula")
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + EPS)
    shift = beta - mean * scale
    folded = x.astype(np.float64) * scale[:, None] + shift[:, None]
    assert_close(y, folded, dtype, "y vs x*scale + shift")


@pytest.mark.parametrize("shape", [(3, 2, 5), (2, 3, 4)])
def test_training_backward_matches_finite_differences(device, shape):
    x, gamma, beta, dy = random_batch(shape, np.float64, seed=1)
    numeric = numerical_grads(
        lambda *a: to_numpy(batchnorm_forward(*on(device, *a), EPS)[0]), [x, gamma, beta], dy)
    assert_grads_close(train_grads(device, x, gamma, beta, dy), numeric, ["x", "gamma", "beta"])


@pytest.mark.parametrize("shape", [(3, 2, 5), (2, 3, 4)])
def test_inference_backward_matches_finite_differences(device, shape):
    x, gamma, beta, dy = random_batch(shape, np.float64, seed=1)
    mean, var = on(device, *running_stats(x))
    numeric = numerical_grads(
        lambda x, g, b: to_numpy(batchnorm_inference(*on(device, x, g, b), mean, var, EPS)),
        [x, gamma, beta], dy)
    x_d, gamma_d, dy_d = on(device, x, gamma, dy)
    analytic = batchnorm_inference_backward(dy_d, x_d, gamma_d, mean, var, EPS)
    assert_grads_close([to_numpy(g) for g in analytic], numeric, ["x", "gamma", "beta"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_identities(device, dtype):
    # eps=0: with eps > 0, mean(xhat^2) = var/(var+eps) < 1 and dx is not quite orthogonal to xhat
    x, gamma, beta, dy = random_batch((4, 3, 50), dtype, seed=2)
    dx, dgamma, dbeta = train_grads(device, x, gamma, beta, dy, eps=0.0)
    xhat = bn_train_ref(x, eps=0.0)[0]
    dy = dy.astype(np.float64)
    acc = acc_dtype(dtype)
    assert_close(dbeta, dy.sum(axis=(0, 2)), acc, "dbeta vs sum dy")
    assert_close(dgamma, (dy * xhat).sum(axis=(0, 2)), acc, "dgamma vs sum dy*xhat")
    # gamma is constant over each channel (the normalization group), so per channel dx
    # is orthogonal to the constants and to xhat; the sums cancel down to rounding of dx
    dx = dx.astype(np.float64)
    rtol = TOL[np.dtype(dtype)][1]
    for name, terms in [("sum dx", dx), ("sum dx*xhat", dx * xhat)]:
        total, size = terms.sum(axis=(0, 2)), np.abs(terms).sum(axis=(0, 2))
        assert (np.abs(total) <= rtol * size).all(), f"{name} per channel: {total} ({dtype.__name__})"


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_backward_close_to_float64(device, dtype):
    x, gamma, beta, dy = random_batch((3, 7, 143), dtype, seed=4)
    grads64 = train_grads(device, *(a.astype(np.float64) for a in (x, gamma, beta, dy)))
    for name, g, g64 in zip(["dx", "dgamma", "dbeta"], train_grads(device, x, gamma, beta, dy), grads64):
        assert_close(g, g64, dtype, name)


def test_large_common_offset_float32(device):
    # float32 resolves 1e4 to ~1e-3, a tenth of the spread: the rounding of the stored
    # mean alone makes a plain two-pass var ~1e-3 too high here. The corrected two-pass
    # is good to ~1e-7, so 1e-4 (tighter than the 1e-3 asked for) tells the two apart.
    rng = np.random.default_rng(3)
    x = (1e4 + 0.01 * rng.standard_normal((4, 16, 1000))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, mean, var, rstd = batchnorm_forward(to_dev(x, device), None, None, EPS)
    np.testing.assert_allclose(to_numpy(var), bn_train_ref(x)[2], rtol=1e-4)
    dx, _, _ = batchnorm_backward(to_dev(dy, device), to_dev(x, device), None, mean, rstd)
    assert np.isfinite(to_numpy(y)).all() and np.isfinite(to_numpy(dx)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_input_gives_beta_and_finite_grads(device, dtype):
    # -1.75 is dyadic, so every partial sum and the mean are exact and x - mean is exactly 0
    _, gamma, beta, dy = random_batch((3, 2, 7), dtype)
    x = np.full((3, 2, 7), -1.75, dtype)
    y, mean, var, rstd = batchnorm_forward(*on(device, x, gamma, beta), EPS)
    assert (to_numpy(var) == 0).all()
    np.testing.assert_array_equal(to_numpy(y), np.broadcast_to(beta.astype(dtype)[:, None], x.shape))
    for g in train_grads(device, x, gamma, beta, dy):
        assert np.isfinite(g).all()


def test_long_reduction_float32(device):
    x, gamma, beta, _ = random_batch((4, 2, 2**19), np.float32)
    y, mean, var, _ = batchnorm_forward(*on(device, x, gamma, beta), EPS)
    y64, mean64, var64 = bn_train_ref(x, gamma, beta, EPS)
    for name, a, ref in [("y", y, y64), ("mean", mean, mean64), ("var", var, var64)]:
        assert_close(a, ref, np.float32, name)


def test_float16_input_with_variance_beyond_float16_range(device):
    # values fit float16 (max 65504) but their variance, ~2e9, does not: it must stay float32
    rng = np.random.default_rng(6)
    sign = np.where(np.arange(2 * 3 * 40).reshape(2, 3, 40) % 2 == 0, 1.0, -1.0)
    x = (sign * rng.uniform(3e4, 6e4, sign.shape)).astype(np.float16)
    _, gamma, beta, dy = random_batch(x.shape, np.float16)
    y, mean, var, rstd = batchnorm_forward(*on(device, x, gamma, beta), EPS)
    y64, _, var64 = bn_train_ref(x, gamma, beta, EPS)
    assert var.dtype == np.float32 and (var64 > 65504).all()
    assert_close(var, var64, np.float32, "var")
    assert_close(y, y64, np.float16, "y")
    for g in train_grads(device, x, gamma, beta, dy):
        assert np.isfinite(g).all()
