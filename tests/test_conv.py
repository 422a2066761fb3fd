"""Conv2d and the 2-D pools (cubn/ops/conv.py, cubn/nn/conv.py, cubn/nn/pooling.py), on each device.

Forward values are compared with float64 references written below as plain Python loops over
output positions (slow, but each line is the textbook definition); gradients are checked in
float64 against finite differences with a random upstream gradient (tests/gradcheck.py). On
'cuda' the inputs are moved with the differentiable ``.to``, so the same checks cover CuPy.
"""
import math

import numpy
import pytest

import cubn
from cubn.nn.conv import Conv2d, conv2d
from cubn.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, adaptive_avg_pool2d, avg_pool2d, max_pool2d
from conftest import to_dev
from gradcheck import check_autodiff
from tolerance import assert_close


def on(device, fn):
    """``fn`` with its Tensor arguments moved to ``device`` first (differentiably)."""
    return lambda *ts: fn(*(t.to(device) for t in ts))


def rng(seed=0):
    return numpy.random.default_rng(seed)


def run(device, fn, *arrays):
    with cubn.no_grad():
        return fn(*(cubn.tensor(to_dev(a, device)) for a in arrays)).numpy()


# ---- float64 references: one output element at a time --------------------------------------
def padded(x, ph, pw, fill):
    out = numpy.full(x.shape[:2] + (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw), fill)
    out[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return out


def ref_conv2d(x, w, b, stride, padding, dilation, groups):
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    xp = padded(x, ph, pw, 0.0)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    y = numpy.zeros((N, O, OH, OW))
    for n in range(N):
        for o in range(O):
            g = o // (O // groups)
            for i in range(OH):
                for j in range(OW):
                    total = 0.0 if b is None else b[o]
                    for c in range(Cg):
                        for p in range(KH):
                            for q in range(KW):
                                total += w[o, c, p, q] * xp[n, g * Cg + c, i * sh + p * dh, j * sw + q * dw]
                    y[n, o, i, j] = total
    return y


def ref_pool(x, kernel, stride, padding, reduce, fill):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = padded(x, ph, pw, fill)
    OH, OW = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = numpy.zeros(x.shape[:2] + (OH, OW))
    for n, c, i, j in numpy.ndindex(*y.shape):
        y[n, c, i, j] = reduce(xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw])
    return y


def ref_adaptive_avg(x, size):
    H, W = x.shape[2:]
    y = numpy.zeros(x.shape[:2] + tuple(size))
    for n, c, i, j in numpy.ndindex(*y.shape):
        rows = slice(i * H // size[0], math.ceil((i + 1) * H / size[0]))
        cols = slice(j * W // size[1], math.ceil((j + 1) * W / size[1]))
        y[n, c, i, j] = x[n, c, rows, cols].mean()
    return y


def pair(v):
    return (v, v) if isinstance(v, int) else v


# ---- convolution -------------------------------------------------------------------------
# (x shape, weight shape, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "plain 3x3": ((2, 3, 6, 5), (4, 3, 3, 3), 1, 0, 1, 1, True),
    "stride 2, padding 1": ((2, 2, 7, 6), (3, 2, 3, 3), 2, 1, 1, 1, True),
    "dilation 2": ((1, 2, 7, 7), (2, 2, 3, 3), 1, 1, 2, 1, True),
    "non-square everything": ((2, 2, 7, 8), (3, 2, 2, 3), (2, 1), (1, 0), (1, 2), 1, True),
    "groups 2, no bias": ((2, 4, 5, 5), (6, 2, 3, 3), 1, 1, 1, 2, False),
    "depthwise x2": ((2, 3, 5, 6), (6, 1, 3, 3), 1, 1, 1, 3, True),
    "1x1": ((2, 3, 4, 4), (5, 3, 1, 1), 1, 0, 1, 1, True),
    "kernel = padded input": ((1, 1, 3, 3), (2, 1, 5, 5), 1, 1, 1, 1, True),
    # stride 1 with more than twice as many outputs as inputs: dx through col2im, not the flipped conv
    "stride 1, 1 -> 4 channels": ((2, 1, 5, 6), (4, 1, 3, 3), 1, 1, 1, 1, True),
    "stride 1, groups 2, 3 outputs per input": ((2, 2, 5, 5), (6, 1, 3, 2), 1, (1, 0), 1, 2, False),
}


def conv_case(name, seed=0):
    xs, ws, stride, padding, dilation, groups, bias = CONV_CASES[name]
    r = rng(seed)
    arrays = [r.standard_normal(xs), r.standard_normal(ws)] + ([r.standard_normal(ws[0])] if bias else [])
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return arrays, kwargs


def conv_fn(kwargs):
    return lambda x, w, b=None: conv2d(x, w, b, **kwargs)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv2d_forward_matches_loops(device, name):
    arrays, kw = conv_case(name)
    expected = ref_conv2d(*arrays[:2], arrays[2] if len(arrays) == 3 else None,
                          pair(kw["stride"]), pair(kw["padding"]), pair(kw["dilation"]), kw["groups"])
    numpy.testing.assert_allclose(run(device, conv_fn(kw), *arrays), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv2d_gradients(device, name):
    arrays, kw = conv_case(name)
    check_autodiff(on(device, conv_fn(kw)), *arrays)


def test_conv2d_grads_only_where_asked(device):
    arrays, kw = conv_case("stride 2, padding 1")
    x, w, b = (cubn.tensor(to_dev(a, device), requires_grad=i == 1) for i, a in enumerate(arrays))
    y = conv2d(x, w, b, **kw)
    y.backward(to_dev(numpy.ones(y.shape), device))
    assert x.grad is None and b.grad is None and w.grad.shape == w.shape


def test_conv2d_float32_and_noncontiguous_input(device):
    (x, w, b), kw = conv_case("plain 3x3")  # no padding: the strided view is taken on the input itself
    x32 = numpy.ascontiguousarray(x.swapaxes(2, 3), dtype=numpy.float32).swapaxes(2, 3)
    out = conv2d(*(cubn.tensor(to_dev(a, device)) for a in (x32, w.astype(numpy.float32), b.astype(numpy.float32))))
    assert out.dtype == numpy.float32 and out.device == device
    assert_close(out.data, ref_conv2d(x, w, b, (1, 1), (0, 0), (1, 1), 1), numpy.float32)


def test_conv2d_empty_batch(device):
    x = cubn.tensor(to_dev(numpy.zeros((0, 2, 5, 5)), device), requires_grad=True)
    w = cubn.tensor(to_dev(numpy.ones((3, 2, 3, 3)), device), requires_grad=True)
    y = conv2d(x, w, padding=1)
    assert y.shape == (0, 3, 5, 5)
    y.backward(to_dev(numpy.zeros(y.shape), device))
    assert x.grad.shape == x.shape and not cubn.backend.to_numpy(w.grad).any()


# ---- pooling -----------------------------------------------------------------------------
# (x shape, kernel_size, stride, padding): overlapping windows, padding, non-square, uneven fits
POOL_CASES = {
    "2x2": ((2, 3, 6, 6), 2, None, 0),
    "3x3 stride 1 overlapping, padding 1": ((1, 2, 5, 6), 3, 1, 1),
    "3x3 stride 2 padding 1": ((2, 2, 7, 7), 3, 2, 1),
    "non-square": ((1, 2, 6, 7), (2, 3), (1, 2), (1, 1)),
    "window does not tile": ((1, 1, 7, 5), 3, 2, 0),
    "2x2 tiles, odd sizes (last row and column unread)": ((2, 2, 7, 5), 2, None, 0),
    "3x2 tiles": ((1, 3, 6, 8), (3, 2), None, 0),
}
POOLS = {"max": (max_pool2d, numpy.max, -numpy.inf), "avg": (avg_pool2d, numpy.mean, 0.0)}


def pool_fn(pool, kernel, stride, padding):
    return lambda x: POOLS[pool][0](x, kernel, stride, padding)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("name", POOL_CASES)
def test_pool_forward_matches_loops(device, pool, name):
    shape, kernel, stride, padding = POOL_CASES[name]
    x = -2.3 + rng().standard_normal(shape)  # all negative enough that a -inf or 0 pad would show up in max
    _, reduce, fill = POOLS[pool]
    expected = ref_pool(x, pair(kernel), pair(stride or kernel), pair(padding), reduce, fill)
    numpy.testing.assert_allclose(run(device, pool_fn(pool, kernel, stride, padding), x), expected, rtol=1e-13)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("name", POOL_CASES)
def test_pool_gradients(device, pool, name):
    shape, kernel, stride, padding = POOL_CASES[name]
    # distinct values far apart compared with the finite-difference step: no max changes place
    x = rng(1).permutation(numpy.prod(shape)).reshape(shape) * 0.01
    check_autodiff(on(device, pool_fn(pool, kernel, stride, padding)), x)


def test_max_pool_ties_go_to_the_first_maximum(device):
    x = cubn.tensor(to_dev(numpy.array([[[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]]]), device),
                    requires_grad=True)
    y = max_pool2d(x, 2, 1)
    y.backward(to_dev(numpy.array([[[[1.0, 10.0], [100.0, 1000.0]]]]), device))
    # windows at (0,0), (0,1), (1,0) all find their first maximum at x[0,0], x[0,1], x[1,0]; (1,1) at x[1,1]
    assert cubn.backend.to_numpy(x.grad)[0, 0].tolist() == [[1.0, 10.0, 0.0], [100.0, 1000.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("stride", [2, 1], ids=["tiles", "windows"])
def test_max_pool_ties_and_nans_go_to_the_first_in_window_order(device, stride):
    """Both roads (tiling windows, overlapping windows) pick the same element: the first maximum in
    row-major window order, and in a window holding NaN the first NaN."""
    x = numpy.array([[[[3.0, 3.0, 1.0, numpy.nan],
                       [3.0, 3.0, numpy.nan, numpy.nan],
                       [0.0, 2.0, numpy.nan, 5.0],
                       [2.0, 2.0, 7.0, 7.0]]]])
    t = cubn.tensor(to_dev(x, device), requires_grad=True)
    y = max_pool2d(t, 2, stride)
    y.backward(to_dev(numpy.arange(1.0, y.size + 1).reshape(y.shape), device))
    got = cubn.backend.to_numpy(t.grad)[0, 0]
    if stride == 2:
        assert got.tolist() == [[1, 0, 0, 2], [0, 0, 0, 0], [0, 3, 4, 0], [0, 0, 0, 0]]
    want = numpy.zeros((4, 4))
    out = cubn.backend.to_numpy(y.data)[0, 0]
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            win = x[0, 0, i * stride:i * stride + 2, j * stride:j * stride + 2].reshape(-1)
            k = int(numpy.flatnonzero(numpy.isnan(win))[0]) if numpy.isnan(win).any() else int(numpy.argmax(win))
            want[i * stride + k // 2, j * stride + k % 2] += i * out.shape[1] + j + 1
            assert numpy.isnan(out[i, j]) == numpy.isnan(win).any()
    numpy.testing.assert_array_equal(got, want)


def test_max_pool_propagates_nan(device):
    x = numpy.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = numpy.nan
    out = run(device, lambda t: max_pool2d(t, 2), x)
    assert numpy.isnan(out[0, 0, 0, 0]) and out[0, 0, 1, 1] == 15.0


ADAPTIVE_CASES = [((7, 9), (3, 4)), ((5, 6), (4, 5)), ((3, 4), (5, 7)), ((8, 6), (4, 2)), ((5, 5), (1, 1))]


@pytest.mark.parametrize("hw,size", ADAPTIVE_CASES, ids=str)
def test_adaptive_avg_pool(device, hw, size):
    x = rng().standard_normal((2, 3) + hw)
    fn = lambda t: adaptive_avg_pool2d(t, size)  # noqa: E731
    numpy.testing.assert_allclose(run(device, fn, x), ref_adaptive_avg(x, size), rtol=1e-13)
    check_autodiff(on(device, fn), x)


def test_pools_keep_float32(device):
    x = rng().standard_normal((2, 3, 7, 7)).astype(numpy.float32)
    for fn in (lambda t: max_pool2d(t, 3, 2, 1), lambda t: avg_pool2d(t, 3, 2, 1), lambda t: adaptive_avg_pool2d(t, 3)):
        out = fn(cubn.tensor(to_dev(x, device)))
        assert out.dtype == numpy.float32
        assert_close(out.data, fn(cubn.tensor(x.astype(numpy.float64))).data, numpy.float32)


# ---- argument errors ---------------------------------------------------------------------
def x4(device, shape=(2, 4, 6, 6)):
    return cubn.tensor(to_dev(numpy.zeros(shape), device))


@pytest.mark.parametrize("call,error,match", [
    (lambda x: conv2d(x, numpy.zeros((3, 3, 3, 3))), ValueError, "input has 4 channels, expected in_channels=3"),
    (lambda x: conv2d(x, numpy.zeros((3, 2, 3, 3)), groups=2), ValueError, "groups=2 must divide out_channels=3"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 7, 3))), ValueError, "larger than the padded input"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), dilation=3), ValueError, "larger than the padded input"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), padding=-1), ValueError, "padding must be >= 0"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), stride=0), ValueError, "stride must be >= 1"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), padding=1.5), TypeError, "padding must be an int or a pair"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3)), numpy.zeros(3)), ValueError, r"bias must have shape \(2,\)"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3))), ValueError, "weight must be 4-D"),
    (lambda x: conv2d(x[0], numpy.zeros((2, 4, 3, 3))), ValueError, "input must be 4-D"),
    (lambda x: conv2d(x, numpy.zeros((2, 4, 3, 3), int)), TypeError, "weight must be floating point"),
    (lambda x: max_pool2d(x, 3, padding=2), ValueError, "at most half of kernel_size"),
    (lambda x: avg_pool2d(x, 7), ValueError, "larger than the padded input"),
    (lambda x: max_pool2d(x[0], 2), ValueError, "input must be 4-D"),
    (lambda x: avg_pool2d(x, 0), ValueError, "kernel_size must be >= 1"),
    (lambda x: adaptive_avg_pool2d(x, (2, 0)), ValueError, "output_size must be >= 1"),
    (lambda x: adaptive_avg_pool2d(x[:, :, :0], 2), ValueError, "non-empty"),
])
def test_functional_argument_errors(device, call, error, match):
    with pytest.raises(error, match=match):
        call(x4(device))


@pytest.mark.parametrize("make,error,match", [
    (lambda: Conv2d(4, 6, 3, groups=3), ValueError, "in_channels=4 must be divisible by groups=3"),
    (lambda: Conv2d(4, 6, 3, groups=4), ValueError, "out_channels=6 must be divisible by groups=4"),
    (lambda: Conv2d(0, 6, 3), ValueError, "in_channels must be an integer >= 1"),
    (lambda: Conv2d(4, 6, (3, 0)), ValueError, "kernel_size must be >= 1"),
    (lambda: Conv2d(4, 6, 3, padding=(1, -1)), ValueError, "padding must be >= 0"),
    (lambda: MaxPool2d(2, padding=2), ValueError, "at most half"),
    (lambda: AvgPool2d("2"), TypeError, "kernel_size must be an int or a pair"),
    (lambda: AdaptiveAvgPool2d(0), ValueError, "output_size must be >= 1"),
])
def test_module_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_conv2d_module_rejects_wrong_channels_at_forward(device):
    with pytest.raises(ValueError, match="input has 4 channels, expected in_channels=3"):
        Conv2d(3, 2, 3).to(device)(x4(device))


# ---- modules -----------------------------------------------------------------------------
def test_conv2d_module_init_params_and_repr():
    cubn.manual_seed(0)
    a = Conv2d(6, 8, (3, 5), groups=2)
    cubn.manual_seed(0)
    b = Conv2d(6, 8, (3, 5), groups=2)
    assert a.weight.numpy().tobytes() == b.weight.numpy().tobytes()
    assert [n for n, _ in a.named_parameters()] == ["weight", "bias"]
    assert a.weight.shape == (8, 3, 3, 5) and a.bias.shape == (8,) and a.weight.dtype == numpy.float32
    bound = 1 / math.sqrt(3 * 3 * 5)  # fan_in = in_channels / groups * KH * KW
    w = a.weight.numpy()
    assert numpy.abs(w).max() <= bound and numpy.abs(w).max() > 0.9 * bound
    assert numpy.abs(a.bias.numpy()).max() <= bound
    assert repr(a) == "Conv2d(6, 8, kernel_size=(3, 5), stride=(1, 1), groups=2)"
    c = Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=False)
    assert c.bias is None and [n for n, _ in c.named_parameters()] == ["weight"]
    assert repr(c) == "Conv2d(3, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 2), bias=False)"


def test_conv2d_module_forward_equals_functional(device):
    m = Conv2d(2, 3, 3, stride=2, padding=1).to(device)
    x = cubn.tensor(to_dev(rng().standard_normal((2, 2, 5, 5)).astype(numpy.float32), device))
    expected = conv2d(x, m.weight, m.bias, stride=2, padding=1)
    assert numpy.array_equal(m(x).numpy(), expected.numpy())
    m(x).sum().backward()
    assert m.weight.grad.shape == m.weight.shape and m.bias.grad.shape == (3,)


def test_pool_modules_forward_and_repr(device):
    x = cubn.tensor(to_dev(rng().standard_normal((1, 2, 6, 6)), device))
    for module, fn in ((MaxPool2d(3, 2, 1), lambda t: max_pool2d(t, 3, 2, 1)),
                       (AvgPool2d((2, 3)), lambda t: avg_pool2d(t, (2, 3))),
                       (AdaptiveAvgPool2d((4, 3)), lambda t: adaptive_avg_pool2d(t, (4, 3)))):
        assert numpy.array_equal(module(x).numpy(), fn(x).numpy())
        assert not list(module.parameters())
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(AvgPool2d((2, 3), 1, (1, 0))) == "AvgPool2d(kernel_size=(2, 3), stride=1, padding=(1, 0))"
    assert repr(AdaptiveAvgPool2d((4, 3))) == "AdaptiveAvgPool2d(output_size=(4, 3))"
