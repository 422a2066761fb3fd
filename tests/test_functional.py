"""cubn.nn.functional and the norm modules on user-shaped tensors: values, gradients, layouts."""
import numpy
import pytest
from hypothesis import assume, given, settings, strategies as st

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from conftest import to_dev
from gradcheck import check_autodiff
from ref64_batch import bn_eval_ref, bn_train_ref, brn_fixed_ref, brn_train_ref, random_batch
from ref64_rows import gn_ref, in_ref, ln_ref, rms_ref
from tolerance import assert_close

DTYPES = [numpy.float16, numpy.float32, numpy.float64]
BN_SHAPES = [(4, 3), (5, 2, 7), (3, 7, 11, 13), (2, 3, 4, 5, 6), (6, 1, 3, 3), (8, 4, 1, 1), (2, 5, 3, 3)]


def t(a, device, requires_grad=False):
    return cubn.tensor(to_dev(a, device), requires_grad=requires_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_training_matches_ref64(device, shape, dtype):
    x, gamma, beta, _ = random_batch(shape, dtype)
    rm, rv = numpy.zeros(shape[1], numpy.float32), numpy.ones(shape[1], numpy.float32)
    y = F.batch_norm(t(x, device), to_dev(rm, device), to_dev(rv, device), t(gamma, device), t(beta, device),
                     training=True)
    expect, mean, var = bn_train_ref(x, gamma, beta)
    assert y.dtype == dtype
    assert_close(y.numpy(), expect, dtype, "y")
    n = x.size // shape[1]
    assert_close(cubn.backend.to_numpy(rm), 0.1 * mean, numpy.float32, "running_mean")
    assert_close(cubn.backend.to_numpy(rv), 0.9 + 0.1 * var * n / (n - 1), numpy.float32, "running_var")


@pytest.mark.parametrize("shape", [(3, 7, 11, 13), (2, 1, 5), (4, 3)])
def test_batch_norm_unit_statistics_without_affine(device, shape):
    x, *_ = random_batch(shape, numpy.float64)
    y = F.batch_norm(t(x, device), None, None, training=True).numpy()
    axes = (0,) + tuple(range(2, len(shape)))
    numpy.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-12)
    numpy.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-4)  # 1 - eps/(var+eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_matches_formula_and_folded_form(device, dtype):
    x, gamma, beta, _ = random_batch((4, 3, 5, 5), dtype)
    rm = numpy.array([2.5, 3.0, 1.0], numpy.float32)
    rv = numpy.array([4.0, 0.5, 2.0], numpy.float32)
    y = F.batch_norm(t(x, device), to_dev(rm, device), to_dev(rv, device), t(gamma, device), t(beta, device))
    assert_close(y.numpy(), bn_eval_ref(x, gamma, beta, rm, rv), dtype, "y")
    scale = gamma / numpy.sqrt(rv.astype(numpy.float64) + 1e-5)
    shift = beta - rm * scale
    folded = x.astype(numpy.float64) * scale[:, None, None] + shift[:, None, None]
    assert_close(y.numpy(), folded, dtype, "folded")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 7), 3), ((1, 256, 1, 1), 32), ((3, 4, 9), 4), ((2, 8, 2, 2, 2), 1)])
def test_group_norm_matches_ref64(device, shape, G, dtype):
    x, gamma, beta, _ = random_batch(shape, dtype)
    y = F.group_norm(t(x, device), G, t(gamma, device), t(beta, device))
    assert_close(y.numpy(), gn_ref(x, G, gamma, beta), dtype, "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,nd", [((4, 10), 1), ((2, 3, 8), 1), ((2, 3, 4, 5), 2), ((2, 2, 3, 4, 5), 3)])
def test_layer_norm_matches_ref64(device, shape, nd, dtype):
    rng = numpy.random.default_rng(1)
    x = (-2.3 + 0.5 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 2, shape[-nd:]).astype(numpy.float32)
    b = rng.standard_normal(shape[-nd:]).astype(numpy.float32)
    y = F.layer_norm(t(x, device), shape[-nd:], t(w, device), t(b, device))
    assert_close(y.numpy(), ln_ref(x, nd, w, b), dtype, "y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_and_rms_norm_match_ref64(device, dtype):
    x, gamma, beta, _ = random_batch((3, 4, 5, 6), dtype)
    assert_close(F.instance_norm(t(x, device), weight=t(gamma, device), bias=t(beta, device)).numpy(),
                 in_ref(x, gamma, beta), dtype, "instance_norm")
    w = numpy.random.default_rng(2).uniform(0.5, 2, (5, 6)).astype(numpy.float32)
    eps = float(numpy.finfo(dtype).eps)
    assert_close(F.rms_norm(t(x, device), (5, 6), t(w, device)).numpy(), rms_ref(x, 2, w, eps), dtype, "rms_norm")


def test_group_norm_special_cases_equal_layer_and_instance_norm(device):
    x, gamma, beta, _ = random_batch((3, 4, 5, 6), numpy.float64)
    gn1 = F.group_norm(t(x, device), 1, t(gamma, device), t(beta, device)).numpy()
    ln = F.layer_norm(t(x, device), (4, 5, 6)).numpy() * gamma[:, None, None] + beta[:, None, None]
    numpy.testing.assert_allclose(gn1, ln, rtol=1e-12, atol=1e-12)
    gnc = F.group_norm(t(x, device), 4, t(gamma, device), t(beta, device)).numpy()
    inn = F.instance_norm(t(x, device), weight=t(gamma, device), bias=t(beta, device)).numpy()
    numpy.testing.assert_allclose(gnc, inn, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_renorm_matches_paper_and_clips(device, dtype):
    x, gamma, beta, _ = random_batch((8, 3, 4, 4), dtype, loc=3.0, scale=2.0)
    rm = numpy.array([0.0, 3.0, 60.0], numpy.float32)   # far from the batch mean: d clips at +-dmax
    rs = numpy.array([0.1, 2.0, 30.0], numpy.float32)   # too small / about right / too large: r clips
    y = F.batch_renorm(t(x, device), to_dev(rm.copy(), device), to_dev(rs.copy(), device), t(gamma, device),
                       t(beta, device), training=True, rmax=2.0, dmax=1.0)
    expect, _, _, r, d = brn_train_ref(x, gamma, beta, rm, rs, 2.0, 1.0)
    assert r[0] == 2.0 and r[2] == 0.5 and abs(d[0]) == 1.0 and abs(d[2]) == 1.0  # the test really clips
    assert_close(y.numpy(), expect, dtype, "y")


def test_batch_renorm_with_unit_limits_is_batch_norm(device):
    x, gamma, beta, dy = random_batch((6, 3, 2, 2), numpy.float64)
    grads = []
    for renorm in (True, False):
        xt, g, b = t(x, device, True), t(gamma, device, True), t(beta, device, True)
        if renorm:
            rm, rs = to_dev(numpy.full(3, 7.0), device), to_dev(numpy.full(3, 0.1), device)
            y = F.batch_renorm(xt, rm, rs, g, b, training=True, rmax=1.0, dmax=0.0)
        else:
            y = F.batch_norm(xt, None, None, g, b, training=True)
        y.backward(to_dev(dy, device))
        grads.append([y.numpy(), xt.grad, g.grad, b.grad])
    for a, b in zip(*grads):
        numpy.testing.assert_allclose(cubn.backend.to_numpy(a), cubn.backend.to_numpy(b), rtol=1e-12, atol=1e-12)


# ---- gradients: float64 finite differences with a random upstream gradient ----------

def _params(c, seed=3):
    rng = numpy.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, c), rng.standard_normal(c)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (3, 2, 2, 3)])
def test_batch_norm_training_gradients(shape):
    x, gamma, beta, _ = random_batch(shape, numpy.float64)
    check_autodiff(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True), x, gamma, beta)


def test_batch_norm_eval_gradients():
    x, gamma, beta, _ = random_batch((4, 3, 2, 2), numpy.float64)
    rm, rv = numpy.array([2.0, 3.0, 4.0]), numpy.array([0.5, 2.0, 1.5])
    check_autodiff(lambda x, g, b: F.batch_norm(x, rm, rv, g, b), x, gamma, beta)


@pytest.mark.parametrize("training", [True, False])
def test_batch_renorm_gradients_treat_r_and_d_as_constants(training):
    x, gamma, beta, _ = random_batch((6, 3, 2), numpy.float64)
    rm, rs = numpy.array([0.0, 3.0, 9.0]), numpy.array([0.5, 2.0, 5.0])
    if training:
        _, _, _, r, d = brn_train_ref(x, gamma, beta, rm, rs, 1.5, 0.5)
        # The autodiff of batch_renorm must equal the finite differences of the
        # composition in which r and d (computed once, above) are constants.
        fixed = lambda x, g, b: cubn.tensor(brn_fixed_ref(x.data, g.data, b.data, r, d))  # noqa: E731
        x_t, g_t, b_t = (cubn.tensor(a.copy(), requires_grad=True) for a in (x, gamma, beta))
        y = F.batch_renorm(x_t, rm.copy(), rs.copy(), g_t, b_t, training=True, rmax=1.5, dmax=0.5)
        dy = numpy.random.default_rng(0).standard_normal(y.shape)
        y.backward(dy)
        from gradcheck import assert_grads_close, numerical_grads
        numeric = numerical_grads(lambda *a: fixed(*[cubn.tensor(v) for v in a]).numpy(), [x, gamma, beta], dy)
        assert_grads_close([x_t.grad, g_t.grad, b_t.grad], numeric, ["x", "gamma", "beta"])
    else:
        check_autodiff(lambda x, g, b: F.batch_renorm(x, rm, rs, g, b, training=False), x, gamma, beta)


@pytest.mark.parametrize("shape,G", [((2, 4, 3), 2), ((2, 6, 2, 2), 3), ((3, 2, 4), 1)])
def test_group_norm_gradients(shape, G):
    x, gamma, beta, _ = random_batch(shape, numpy.float64, loc=-2.3, scale=0.5)
    check_autodiff(lambda x, g, b: F.group_norm(x, G, g, b), x, gamma, beta)


def test_layer_norm_gradients():
    rng = numpy.random.default_rng(0)
    x = -2.3 + 0.5 * rng.standard_normal((3, 2, 4))
    w, b = rng.uniform(0.5, 2, (2, 4)), rng.standard_normal((2, 4))
    check_autodiff(lambda x, w, b: F.layer_norm(x, (2, 4), w, b), x, w, b)


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_gradients(use_input_stats):
    x, gamma, beta, _ = random_batch((2, 3, 5), numpy.float64)
    rm, rv = numpy.array([1.0, 2.0, 3.0]), numpy.array([1.0, 2.0, 0.5])
    check_autodiff(lambda x, g, b: F.instance_norm(x, rm, rv, g, b, use_input_stats=use_input_stats),
                   x, gamma, beta)


def test_rms_norm_gradients():
    rng = numpy.random.default_rng(0)
    x, w = 1.5 + rng.standard_normal((3, 5)), rng.uniform(0.5, 2, 5)
    check_autodiff(lambda x, w: F.rms_norm(x, (5,), w, eps=1e-5), x, w)


# ---- layouts ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["transposed", "sliced", "fortran"])
def test_non_contiguous_input_and_dy(device, layout):
    base, gamma, beta, _ = random_batch((6, 4, 5, 7), numpy.float64)
    x = {"transposed": base.transpose(0, 1, 3, 2), "sliced": base[::2, :, 1:, ::2],
         "fortran": numpy.asfortranarray(base)}[layout]
    dy = numpy.random.default_rng(5).standard_normal(x.shape)
    dy = numpy.asfortranarray(dy) if layout != "fortran" else dy.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
    assert not (x.flags.c_contiguous and dy.flags.c_contiguous)
    xc = numpy.ascontiguousarray(x)
    results = []
    for xin, dyin in ((x, dy), (xc, numpy.ascontiguousarray(dy))):
        xt = cubn.tensor(to_dev(xin, device), requires_grad=True)
        y = F.batch_norm(xt, None, None, t(gamma, device), t(beta, device), training=True)
        y.backward(to_dev(dyin, device))
        results.append((y.numpy(), cubn.backend.to_numpy(xt.grad)))
    numpy.testing.assert_allclose(results[0][0], bn_train_ref(xc, gamma, beta)[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(*results):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_modules_accept_and_return_the_input_dtype(device):
    x = numpy.random.default_rng(0).standard_normal((4, 8, 3, 3)).astype(numpy.float16)
    for layer in (nn.BatchNorm2d(8), nn.GroupNorm(4, 8), nn.InstanceNorm2d(8, affine=True),
                  nn.LayerNorm((8, 3, 3)), nn.RMSNorm((3, 3)), nn.BatchRenorm2d(8)):
        layer.to(device)
        y = layer(t(x, device))
        assert y.dtype == numpy.float16, type(layer).__name__
        assert numpy.isfinite(y.numpy()).all(), type(layer).__name__
        for p in layer.parameters():
            assert p.dtype == numpy.float32


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=5), seed=st.integers(0, 2**16),
       loc=st.sampled_from([0.0, -2.3, 1000.0]))
def test_batch_norm_on_random_shapes_matches_ref64(shape, seed, loc):
    shape = tuple(shape)
    assume(numpy.prod(shape) // shape[1] > 1)
    x, gamma, beta, _ = random_batch(shape, numpy.float64, seed=seed, loc=loc)
    y = F.batch_norm(cubn.tensor(x), None, None, cubn.tensor(gamma), cubn.tensor(beta), training=True)
    assert_close(y.numpy(), bn_train_ref(x, gamma, beta)[0], numpy.float64, "y", scale=100.0)
