"""Invariances the papers prove, and numerical robustness at the layer level."""
import numpy
import pytest

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from conftest import to_dev


def rng(seed=0):
    return numpy.random.default_rng(seed)


def t(a, device, requires_grad=False):
    return cubn.tensor(to_dev(a, device), requires_grad=requires_grad)


def bn_after_linear(x, w, b, device, eps, dy):
    """BN(x @ w.T + b) in float64; returns the output and the gradient of w under upstream dy."""
    wt = t(w, device, True)
    y = F.batch_norm(t(x, device) @ wt.T + t(b, device), None, None, training=True, eps=eps)
    y.backward(to_dev(dy, device))
    return y.numpy(), cubn.backend.to_numpy(wt.grad)


@pytest.mark.parametrize("a", [0.01, 3.0, 250.0])
def test_batch_norm_is_invariant_to_weight_scale_and_weight_grad_scales_by_inverse(device, a):
    # Ioffe & Szegedy 2015, section 3.3: BN((aW)u) = BN(Wu) and dL/d(aW) = (1/a) dL/dW.
    x, w, b = rng().standard_normal((16, 5)), rng(1).standard_normal((4, 5)), rng(2).standard_normal(4)
    dy = rng(3).standard_normal((16, 4))
    y1, g1 = bn_after_linear(x, w, b, device, 0.0, dy)
    y2, g2 = bn_after_linear(x, a * w, a * b, device, 0.0, dy)
    numpy.testing.assert_allclose(y2, y1, rtol=1e-9, atol=1e-11)
    numpy.testing.assert_allclose(g2, g1 / a, rtol=1e-8, atol=1e-12)


def test_batch_norm_is_invariant_to_a_per_channel_shift(device):
    x = rng().standard_normal((8, 3, 4, 4))
    shift = numpy.array([100.0, -7.5, 0.25])[None, :, None, None]
    y1 = F.batch_norm(t(x, device), None, None, training=True).numpy()
    y2 = F.batch_norm(t(x + shift, device), None, None, training=True).numpy()
    numpy.testing.assert_allclose(y2, y1, rtol=1e-9, atol=1e-10)


def test_layer_norm_invariances(device):
    # Ba et al. 2016, table 1: invariant to weight-matrix re-scaling and re-centering, and to
    # scaling a single example.
    x, w = rng().standard_normal((6, 5)), rng(1).standard_normal((8, 5))

    def ln(inputs, weights):
        return F.layer_norm(t(inputs, device) @ t(weights, device).T, (8,), eps=0.0).numpy()

    base = ln(x, w)
    numpy.testing.assert_allclose(ln(x, 7.5 * w), base, rtol=1e-9, atol=1e-10)
    recentered = w + rng(2).standard_normal((1, 5))  # the same vector added to every row
    numpy.testing.assert_allclose(ln(x, recentered), base, rtol=1e-8, atol=1e-9)
    scaled = x.copy()
    scaled[2] *= 40.0
    numpy.testing.assert_allclose(ln(scaled, w), base, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("layer", ["bn", "gn", "ln", "in"])
def test_large_offset_small_spread_in_float32(device, layer):
    # float32 spacing at 1e4 is ~1e-3, so a float32 mean can be off by an ulp: with a spread
    # of 0.1 that shifts xhat by ~1e-2. What must not happen is cancellation (NaN, garbage).
    x = (1e4 + 0.1 * rng().standard_normal((16, 4, 8, 8))).astype(numpy.float32)
    fn = {"bn": lambda v: F.batch_norm(v, None, None, training=True, eps=0.0),
          "gn": lambda v: F.group_norm(v, 2, eps=0.0),
          "ln": lambda v: F.layer_norm(v, (4, 8, 8), eps=0.0),
          "in": lambda v: F.instance_norm(v, eps=0.0)}[layer]
    y = fn(t(x, device)).numpy()
    x64 = x.astype(numpy.float64)
    axes = {"bn": (0, 2, 3), "in": (2, 3), "ln": (1, 2, 3)}.get(layer)
    if layer == "gn":
        x64, y = x64.reshape(16, 2, -1), y.reshape(16, 2, -1)
        axes = (2,)
    expect = (x64 - x64.mean(axes, keepdims=True)) / x64.std(axes, keepdims=True)
    assert numpy.isfinite(y).all()
    numpy.testing.assert_allclose(y, expect, atol=2e-2)
    numpy.testing.assert_allclose(y.std(axes), 1, rtol=1e-3)  # the variance used is right to 1e-3


def test_batch_norm_running_var_with_large_offset_in_float32(device):
    x = (1e4 + 0.1 * rng().standard_normal((64, 3, 16))).astype(numpy.float32)
    bn = nn.BatchNorm1d(3, momentum=1.0).to(device)
    bn(t(x, device))
    expect = x.astype(numpy.float64).transpose(1, 0, 2).reshape(3, -1).var(1, ddof=1)
    numpy.testing.assert_allclose(bn.running_var.numpy(), expect, rtol=1e-3)


@pytest.mark.parametrize("layer", [lambda: nn.BatchNorm2d(3), lambda: nn.GroupNorm(3, 3),
                                   lambda: nn.InstanceNorm2d(3, affine=True), lambda: nn.LayerNorm((3, 4, 4))])
def test_constant_input_gives_beta_and_finite_gradients(device, layer):
    m = layer().to(device)
    m.bias.data[...] = to_dev(numpy.linspace(-1, 1, m.bias.size).reshape(m.bias.shape).astype(numpy.float32), device)
    x = t(numpy.full((4, 3, 4, 4), 3.7, numpy.float32), device, True)
    y = m(x)
    bias = m.bias.numpy()
    expect = bias.reshape(3, 1, 1) if bias.ndim == 1 else bias
    numpy.testing.assert_array_equal(y.numpy(), numpy.broadcast_to(expect, y.shape))
    y.backward(to_dev(rng().standard_normal(y.shape).astype(numpy.float32), device))
    for g in (x.grad, m.weight.grad, m.bias.grad):
        assert numpy.isfinite(cubn.backend.to_numpy(g)).all()


def test_float16_batch_with_variance_beyond_float16_range(device):
    # values fit float16, but their variance (~3.6e9) is far above its max (65504)
    x = numpy.where(rng().standard_normal((8, 2, 4, 4)) > 0, 6e4, -6e4).astype(numpy.float16)
    bn = nn.BatchNorm2d(2, momentum=1.0).to(device)
    y = bn(t(x, device))
    assert y.dtype == numpy.float16 and numpy.isfinite(y.numpy()).all()
    assert bn.running_var.dtype == numpy.float32
    rv = bn.running_var.numpy()
    expect = x.astype(numpy.float64).transpose(1, 0, 2, 3).reshape(2, -1).var(1, ddof=1)
    assert numpy.isfinite(rv).all()
    numpy.testing.assert_allclose(rv, expect, rtol=1e-5)


def test_nan_in_input_reaches_only_its_channel(device):
    # With nonfinite="propagate" (PyTorch's behaviour) a NaN poisons its own channel's output and
    # running statistics and nothing else. The default, "skip", keeps the buffers clean
    # (tests/test_bn_policies.py); the output follows the math either way.
    x = rng().standard_normal((4, 3, 2, 2)).astype(numpy.float32)
    x[1, 1, 0, 0] = numpy.nan
    bn = nn.BatchNorm2d(3, nonfinite="propagate").to(device)
    y = bn(t(x, device)).numpy()
    assert numpy.isnan(y[:, 1]).all() and numpy.isfinite(y[:, [0, 2]]).all()
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    assert numpy.isnan(rm[1]) and numpy.isnan(rv[1])
    assert numpy.isfinite(rm[[0, 2]]).all() and numpy.isfinite(rv[[0, 2]]).all()
