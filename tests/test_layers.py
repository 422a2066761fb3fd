"""Activations, dropout, Flatten and losses (cubn/ops/activation.py, cubn/nn/layers.py), on each device.

References are float64 loops over Python's ``math`` module; gradients are checked against finite
differences with a random upstream gradient (tests/gradcheck.py).
"""
import math

import numpy
import pytest

import cubn
from cubn import backend
from cubn.nn import Linear, Sequential
from cubn.nn.conv import Conv2d
from cubn.nn.layers import (GELU, CrossEntropyLoss, Dropout, Flatten, LeakyReLU, MSELoss, SiLU, Sigmoid, Softmax,
                            Tanh, dropout, gelu, leaky_relu, silu)
from cubn.nn.pooling import MaxPool2d
from cubn.ops import math as M
from cubn.ops.activation import erfc
from conftest import to_dev
from gradcheck import check_autodiff


def on(device, fn):
    return lambda *ts: fn(*(t.to(device) for t in ts))


def rng(seed=0):
    return numpy.random.default_rng(seed)


def leaf(a, device):
    return cubn.tensor(to_dev(numpy.asarray(a, dtype=numpy.float64), device), requires_grad=True)


# ---- erfc and the activations ------------------------------------------------------------
def test_erfc_matches_python_math_to_a_few_ulp(device):
    x = numpy.concatenate([numpy.linspace(-6, 6, 24001), numpy.linspace(-30, 30, 6001),
                           [0.0, 0.46875, -0.46875, 4.0, -4.0, 1e-300, 1e300, -1e300]])
    got = backend.to_numpy(erfc(to_dev(x, device)))
    expected = numpy.array([math.erfc(v) for v in x])
    normal = expected > 1e-300  # below that erfc is denormal or underflows, like the reference
    assert numpy.abs(got - expected)[normal].max() <= 1e-15 * expected[normal].max()
    assert (numpy.abs(got - expected)[normal] <= 2e-15 * expected[normal]).all()
    assert numpy.abs(got - expected)[~normal].max() < 1e-300
    assert numpy.isnan(backend.to_numpy(erfc(to_dev(numpy.array([numpy.nan]), device)))).all()


ACTIVATIONS = {
    "gelu": (gelu, lambda v: v * 0.5 * (1 + math.erf(v / math.sqrt(2)))),
    "gelu tanh": (lambda t: gelu(t, approximate="tanh"),
                  lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))),
    "silu": (silu, lambda v: v / (1 + math.exp(-v))),
    "leaky_relu": (lambda t: leaky_relu(t, 0.2), lambda v: v if v > 0 else 0.2 * v),
    "leaky_relu default": (leaky_relu, lambda v: v if v > 0 else 0.01 * v),
}


def away_from_zero(shape, seed=0):
    """Values with |v| in [0.05, 5): no finite-difference step crosses the kink of leaky_relu."""
    r = rng(seed)
    return r.uniform(0.05, 5.0, shape) * r.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward_matches_math(device, name):
    fn, ref = ACTIVATIONS[name]
    x = away_from_zero((3, 50))
    expected = numpy.vectorize(ref)(x)
    numpy.testing.assert_allclose(fn(cubn.tensor(to_dev(x, device))).numpy(), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradients(device, name):
    check_autodiff(on(device, ACTIVATIONS[name][0]), away_from_zero((2, 3, 4)))


def test_leaky_relu_gradient_at_zero_is_the_slope(device):
    x = leaf([0.0, 1.0], device)
    leaky_relu(x, 0.3).backward(to_dev([1.0, 1.0], device))
    assert backend.to_numpy(x.grad).tolist() == [0.3, 1.0]


def test_gelu_is_accurate_in_the_lower_tail(device):
    x = numpy.array([-8.0, -20.0, -35.0])
    expected = [v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x]  # 1 + erf would round to 0 here
    # erfc(z) has condition number 2z^2 (~1200 at z = 35/sqrt(2)): one rounding of x/sqrt(2) costs 1e-13
    numpy.testing.assert_allclose(gelu(cubn.tensor(to_dev(x, device))).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float16])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_keeps_low_precision_dtypes(device, name, dtype):
    fn, ref = ACTIVATIONS[name]
    x = away_from_zero((4, 8)).astype(dtype)
    out = fn(cubn.tensor(to_dev(x, device), requires_grad=True))
    assert out.dtype == dtype
    tol = 1e-6 if dtype == numpy.float32 else 2e-3
    numpy.testing.assert_allclose(out.numpy().astype(float), numpy.vectorize(ref)(x.astype(float)),
                                  rtol=tol, atol=tol)


# ---- dropout -----------------------------------------------------------------------------
def test_dropout_zeroes_about_p_and_scales_the_rest(device):
    cubn.manual_seed(0)
    x = to_dev(rng().uniform(1, 2, (200, 100)), device)
    y = dropout(cubn.tensor(x), 0.3).numpy()
    x = backend.to_numpy(x)
    kept = y != 0
    numpy.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-15)
    assert abs((~kept).mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / x.size)  # 4 sigma


def test_dropout_backward_reuses_the_forward_mask(device):
    x = leaf(rng().uniform(1, 2, (50, 40)), device)
    y = dropout(x, 0.5)
    dy = rng(1).standard_normal(y.shape)
    y.backward(to_dev(dy, device))
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), dy * y.numpy() / x.numpy(), rtol=1e-14)


def test_dropout_is_repeatable_under_manual_seed(device):
    x = cubn.tensor(to_dev(numpy.ones((30, 30)), device))
    masks = []
    for seed in (5, 5, 6):
        cubn.manual_seed(seed)
        masks.append([dropout(x, 0.5).numpy() for _ in range(2)])
    assert numpy.array_equal(masks[0], masks[1])
    assert not numpy.array_equal(masks[0][0], masks[0][1]) and not numpy.array_equal(masks[0], masks[2])


def test_dropout_is_the_identity_in_eval_and_for_p_zero(device):
    x = cubn.tensor(to_dev(rng().standard_normal((4, 5)), device))
    layer = Dropout(0.9).eval()
    for out in (layer(x), dropout(x, 0.0), dropout(x, 0.5, training=False)):
        assert numpy.array_equal(out.numpy(), x.numpy())
    assert not numpy.array_equal(layer.train()(x).numpy(), x.numpy())


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True, "0.5", None])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
        Dropout(p)
    with pytest.raises(ValueError, match="p must be"):
        dropout(numpy.ones(3), p)


# ---- other layers ------------------------------------------------------------------------
def test_flatten(device):
    x = cubn.tensor(to_dev(numpy.arange(120.0).reshape(2, 3, 4, 5), device))
    assert Flatten()(x).shape == (2, 60)
    assert Flatten(0, 2)(x).shape == (24, 5)
    assert numpy.array_equal(Flatten(1, 2)(x).numpy(), numpy.arange(120.0).reshape(2, 12, 5))


def test_elementwise_and_softmax_layers_match_the_ops(device):
    x = cubn.tensor(to_dev(rng().standard_normal((3, 4, 2)), device))
    for layer, fn in ((Sigmoid(), M.sigmoid), (Tanh(), M.tanh), (Softmax(1), lambda t: M.softmax(t, 1)),
                      (SiLU(), silu), (GELU("tanh"), lambda t: gelu(t, "tanh")),
                      (LeakyReLU(0.5), lambda t: leaky_relu(t, 0.5))):
        assert numpy.array_equal(layer(x).numpy(), fn(x).numpy()), layer
    numpy.testing.assert_allclose(Softmax(dim=1)(x).numpy().sum(axis=1), numpy.ones((3, 2)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_loss_is_the_functional(device, reduction, smoothing):
    logits = cubn.tensor(to_dev(rng().standard_normal((5, 4)), device))
    target = to_dev(numpy.array([0, 3, 1, 1, 2]), device)
    expected = M.cross_entropy(logits, target, reduction, smoothing)
    assert numpy.array_equal(CrossEntropyLoss(reduction, label_smoothing=smoothing)(logits, target).numpy(),
                             expected.numpy())


def ref_mse(x, t, reduction):
    losses = numpy.zeros(x.shape)
    for i in numpy.ndindex(*x.shape):
        losses[i] = (x[i] - t[i]) ** 2
    return losses if reduction == "none" else losses.sum() if reduction == "sum" else losses.sum() / x.size


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(device, reduction):
    x, t = rng(1).standard_normal((3, 4)), rng(2).standard_normal((3, 4))
    loss = MSELoss(reduction)
    numpy.testing.assert_allclose(loss(cubn.tensor(to_dev(x, device)), to_dev(t, device)).numpy(),
                                  ref_mse(x, t, reduction), rtol=1e-14)
    check_autodiff(on(device, loss), x, t)


@pytest.mark.parametrize("call,error,match", [
    (lambda: MSELoss()(numpy.ones((2, 3)), numpy.ones(3)), ValueError, r"target must have the input's shape \(2, 3\)"),
    (lambda: MSELoss(reduction="avg"), ValueError, "reduction must be 'mean', 'sum' or 'none'"),
    (lambda: CrossEntropyLoss(reduction="batchmean"), ValueError, "reduction must be"),
    (lambda: CrossEntropyLoss(label_smoothing=1.0), ValueError, r"label_smoothing must be a number in \[0, 1\)"),
    (lambda: LeakyReLU("0.1"), TypeError, "negative_slope must be a finite real number"),
    (lambda: leaky_relu(numpy.ones(2), float("nan")), TypeError, "negative_slope"),
    (lambda: GELU("erf"), ValueError, "approximate must be 'none' or 'tanh'"),
    (lambda: gelu(numpy.ones(2), approximate=None), ValueError, "approximate"),
    (lambda: silu(numpy.arange(3)), TypeError, "input must be floating point"),
    (lambda: Softmax("1"), TypeError, "dim must be an int"),
])
def test_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reprs():
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(Dropout()) == "Dropout(p=0.5)"
    assert repr(LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(GELU()) == "GELU(approximate='none')"
    assert repr(Softmax(1)) == "Softmax(dim=1)"
    assert repr(CrossEntropyLoss()) == "CrossEntropyLoss(reduction='mean', label_smoothing=0.0)"
    assert repr(MSELoss("sum")) == "MSELoss(reduction='sum')"
    assert [repr(m) for m in (SiLU(), Sigmoid(), Tanh())] == ["SiLU()", "Sigmoid()", "Tanh()"]
    assert not any(list(m.parameters()) for m in (Flatten(), Dropout(), GELU(), CrossEntropyLoss()))


def test_a_small_cnn_learns(device):
    """Conv -> GELU -> MaxPool -> Flatten -> Dropout -> Linear: SGD drives the loss down on two easy classes."""
    cubn.manual_seed(0)
    model = Sequential(Conv2d(1, 4, 3, padding=1), GELU(), MaxPool2d(2), Flatten(), Dropout(0.1),
                       Linear(4 * 4 * 4, 2)).to(device)
    labels = rng().integers(0, 2, 32)
    images = rng(1).standard_normal((32, 1, 8, 8)) * 0.3
    images[labels == 1, :, :4] += 1.0  # class 1: a bright upper half
    x = cubn.tensor(to_dev(images.astype(numpy.float32), device))
    target = to_dev(labels, device)
    loss_fn, losses = CrossEntropyLoss(), []
    for _ in range(30):
        loss = loss_fn(model(x), target)
        losses.append(loss.item())
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= 0.5 * p.grad
    assert losses[-1] < 0.25 * losses[0]
