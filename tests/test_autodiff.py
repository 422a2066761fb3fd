"""The tape engine (cubn/tensor.py) and every general op (cubn/ops/math.py), on each device.

Gradients are checked in float64 against finite differences with a random upstream gradient
(tests/gradcheck.py). On 'cuda' the float64 inputs are moved with the differentiable ``.to``,
so the same check covers the CuPy path.
"""
import operator

import numpy
import pytest

import cubn
from cubn import backend
from cubn.ops import math as M
from gradcheck import check_autodiff
from conftest import to_dev


def gradcheck(device, fn, *arrays, **kwargs):
    check_autodiff(lambda *ts: fn(*(t.to(device) for t in ts)), *arrays, **kwargs)


def leaf(a, device, dtype=numpy.float64):
    return cubn.tensor(to_dev(numpy.asarray(a, dtype=dtype), device), requires_grad=True)


def rng(seed=0):
    return numpy.random.default_rng(seed)


def away_from_zero(shape, seed=0):
    """Values with |v| in [0.5, 2): safe for division, log of |v|, relu kinks."""
    r = rng(seed)
    return r.uniform(0.5, 2.0, shape) * r.choice([-1.0, 1.0], shape)


# ---- engine ----------------------------------------------------------------------------------
def test_grads_accumulate_until_zero_grad(device):
    x = leaf([1.0, 2.0], device)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [3 + 2, 3 + 4])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [3.0, 3.0])


def test_value_used_twice_gets_both_paths(device):
    x = leaf([0.5, -1.0, 2.0], device)
    y = x * 2.0
    (y * y + y.exp()).sum().backward()  # diamond: y feeds both terms
    a = numpy.array([0.5, -1.0, 2.0])
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), 2 * (2 * 2 * a) + 2 * numpy.exp(2 * a))


def test_gradient_buffers_are_not_shared_between_inputs(device):
    # out = (x + w) + x: Add hands the same upstream array to both inputs; adding the second
    # path of x into it in place would also change w's gradient and the caller's grad array.
    x, w = leaf(numpy.ones(3), device), leaf(numpy.ones(3), device)
    dy = to_dev([1.0, 2.0, 3.0], device)
    ((x + w) + x).backward(dy)
    numpy.testing.assert_allclose(backend.to_numpy(w.grad), [1, 2, 3])
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [2, 4, 6])
    numpy.testing.assert_allclose(backend.to_numpy(dy), [1, 2, 3])


@pytest.mark.parametrize("second", ["same output", "other output sharing the graph"])
def test_backward_through_a_freed_graph_raises(device, second):
    x = leaf([1.0, 2.0], device)
    shared = x * 2.0
    first, other = (shared + 1.0).sum(), (shared + 2.0).sum()
    first.backward()
    with pytest.raises(RuntimeError, match="second time"):
        (first if second == "same output" else other).backward()


def test_backward_on_non_scalar_needs_grad(device):
    x = leaf(numpy.ones((2, 3)), device)
    with pytest.raises(ValueError, match="grad="):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2.0).backward(numpy.ones(3))


@pytest.mark.parametrize("wrap", [lambda a: a, cubn.tensor], ids=["array", "Tensor"])
def test_backward_grad_as_array_or_tensor(device, wrap):
    x = leaf([1.0, 2.0], device)
    (x * x).backward(wrap(to_dev([10.0, 100.0], device)))
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [20.0, 400.0])


def test_no_grad_records_nothing_and_restores_after_exception(device):
    x = leaf([1.0, 2.0], device)
    with cubn.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(KeyError):
        with cubn.no_grad():
            raise KeyError("inside")
    assert cubn.is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_deep_chain_has_no_recursion_limit(device):
    x = leaf([1.0], device)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [1.0001 ** 10_000], rtol=1e-9)


def test_grad_has_the_kind_shape_and_dtype_of_data(device):
    x = leaf(numpy.ones((3, 1)), device, numpy.float32)
    w = leaf(numpy.ones(4), device, numpy.float32)
    s = leaf(numpy.array(2.0), device, numpy.float32)  # NumPy turns 0-d results into scalars
    (x * w * s).backward(to_dev(numpy.ones((3, 4), numpy.float32), device))
    for t in (x, w, s):
        assert type(t.grad) is type(t.data) and t.grad.shape == t.shape and t.grad.dtype == t.dtype
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), numpy.full((3, 1), 8.0))
    numpy.testing.assert_allclose(backend.to_numpy(w.grad), numpy.full(4, 6.0))
    assert s.grad.item() == 12.0


def test_detach_cuts_the_tape(device):
    x = leaf([1.0, 2.0], device)
    d = x.detach()
    assert not d.requires_grad
    (x * 2.0 + d * 3.0).sum().backward()
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [2.0, 2.0])


def test_conversions(device):
    t = cubn.tensor(to_dev([[1.5, 2.5]], device))
    assert isinstance(t.numpy(), numpy.ndarray) and t.numpy().tolist() == [[1.5, 2.5]]
    assert t.sum().item() == 4.0 and isinstance(t.sum().item(), float)
    assert isinstance(t.to("cpu").data, numpy.ndarray) and t.to("cpu").device == "cpu"
    assert t.device == device


def test_to_device_is_differentiable(device):
    x = cubn.tensor(numpy.array([1.0, 2.0]), requires_grad=True)
    y = x.to(device)
    assert y.device == device
    (y * 3.0).sum().backward()
    assert isinstance(x.grad, numpy.ndarray)
    numpy.testing.assert_allclose(x.grad, [3.0, 3.0])


SCALAR_OPS = [lambda t: t + 2.0, lambda t: 2.0 + t, lambda t: t - 2, lambda t: 2 - t,
              lambda t: t * 2.5, lambda t: 2.5 * t, lambda t: t / 3.0, lambda t: 3.0 / t,
              lambda t: t ** 2, lambda t: t ** numpy.float64(0.5), lambda t: t + numpy.float64(2.0),
              lambda t: t * numpy.array(2.0), lambda t: -t, lambda t: t.mean(), lambda t: t.sigmoid(),
              lambda t: t.softmax(), lambda t: t.log_softmax()]


@pytest.mark.parametrize("op", SCALAR_OPS)
def test_float32_stays_float32_under_scalar_ops(device, op):
    t = leaf([0.5, 1.5], device, numpy.float32)
    out = op(t)
    assert out.dtype == numpy.float32
    out.sum().backward()
    assert t.grad.dtype == numpy.float32


def test_integer_tensor_plus_float_scalar_is_not_truncated(device):
    assert (cubn.tensor(to_dev([1, 2], device)) + 0.5).tolist() == [1.5, 2.5]


def test_integer_tensors_cannot_require_grad(device):
    with pytest.raises(TypeError, match="floating-point"):
        cubn.tensor(to_dev([1, 2], device), requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        cubn.tensor(to_dev([1, 2], device)).requires_grad_()


def test_gradcheck_rejects_a_wrong_backward(device):
    class WrongExp(M.Exp):
        def backward(self, grad):
            return grad  # misses the factor exp(x)

    with pytest.raises(AssertionError, match="finite differences"):
        gradcheck(device, WrongExp.apply, rng().standard_normal(3))


# ---- elementwise binary ops ---------------------------------------------------------
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("shapes", [((3, 1, 4), (4,)), ((2, 3), (2, 3)), ((2, 3), ()), ((4,), (3, 1))])
def test_binary_broadcasting_grads(device, op, shapes):
    gradcheck(device, BINARY[op], away_from_zero(shapes[0], 1), away_from_zero(shapes[1], 2))


@pytest.mark.parametrize("op", BINARY)
def test_binary_with_python_scalar_on_either_side(device, op):
    gradcheck(device, lambda t: BINARY[op](t, 2.5), away_from_zero((2, 3)))
    gradcheck(device, lambda t: BINARY[op](2.5, t), away_from_zero((2, 3)))


@pytest.mark.parametrize("op", BINARY)
def test_binary_with_plain_array_on_either_side(device, op):
    a, b = away_from_zero((2, 3), 1), away_from_zero((3,), 2)
    for out, expected in ((BINARY[op](leaf(a, device), b), BINARY[op](a, b)),
                          (BINARY[op](b, leaf(a, device)), BINARY[op](b, a))):
        assert out.requires_grad and out.device == device
        numpy.testing.assert_allclose(out.numpy(), expected)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1.5, 1])
def test_pow(device, exponent):
    gradcheck(device, lambda t: t ** exponent, rng().uniform(0.5, 2.0, (2, 3)))


def test_pow_zero_exponent_has_zero_grad_at_zero(device):
    x = leaf([0.0, 2.0], device)
    (x ** 0).sum().backward()
    assert backend.to_numpy(x.grad).tolist() == [0.0, 0.0]


def test_pow_rejects_a_tensor_exponent(device):
    with pytest.raises(TypeError, match="exponent"):
        leaf([1.0], device) ** leaf([2.0], device)


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_compare_is_a_bool_tensor_without_grad(device, op):
    a, b = numpy.array([1.0, 2.0, 3.0]), numpy.array([2.0, 2.0, 2.0])
    fn = getattr(operator, op)
    for out, expected in ((fn(leaf(a, device), leaf(b, device)), fn(a, b)), (fn(leaf(a, device), 2.0), fn(a, 2.0))):
        assert out.dtype == bool and not out.requires_grad
        assert out.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="op must be"):
        M.compare(leaf(a, device), b, "approx")


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                    ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3))], ids=str)
def test_matmul(device, shapes):
    a, b = rng(1).standard_normal(shapes[0]), rng(2).standard_normal(shapes[1])
    gradcheck(device, operator.matmul, a, b)
    numpy.testing.assert_allclose((leaf(a, device) @ leaf(b, device)).numpy(), a @ b)


# ---- elementwise unary ops ----------------------------------------------------------
UNARY = {"neg": (operator.neg, away_from_zero), "exp": (M.exp, away_from_zero),
         "log": (M.log, lambda s: abs(away_from_zero(s))), "sqrt": (M.sqrt, lambda s: abs(away_from_zero(s))),
         "relu": (M.relu, away_from_zero), "sigmoid": (M.sigmoid, away_from_zero),
         "tanh": (M.tanh, away_from_zero)}


@pytest.mark.parametrize("name", UNARY)
def test_unary(device, name):
    fn, make = UNARY[name]
    gradcheck(device, fn, make((2, 3)))


def test_sigmoid_is_stable_for_large_inputs(device):
    with numpy.errstate(over="raise", invalid="raise"):  # exp(-1000) may underflow to 0
        out = leaf([-1000.0, 0.0, 1000.0], device).sigmoid().numpy()
    assert out.tolist() == [0.0, 0.5, 1.0]


# ---- reductions ---------------------------------------------------------------------
@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin"])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("spelling", ["torch", "numpy"])
def test_reductions(device, op, axis, keepdims, spelling):
    """dim=/keepdim= (torch's names) and axis=/keepdims= (numpy's, kept as aliases) give the same."""
    x = rng().permutation(24).reshape(2, 3, 4) / 7.0  # distinct values: no ties in max
    kw = {"dim": axis, "keepdim": keepdims} if spelling == "torch" else {"axis": axis, "keepdims": keepdims}
    gradcheck(device, lambda t: getattr(t, op)(**kw), x)
    out = getattr(leaf(x, device), op)(**kw)
    numpy.testing.assert_allclose(out.numpy(), getattr(numpy, op)(x, axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_along_a_dim_give_values_and_indices(device, op, keepdim):
    x = rng().permutation(24).reshape(2, 3, 4) / 7.0
    t = leaf(x, device)
    assert getattr(t, op)().numpy() == getattr(numpy, op)(x)          # no dim: one value, as torch
    values, indices = getattr(t, op)(1, keepdim=keepdim)
    pair = getattr(t, op)(dim=1, keepdim=keepdim)
    assert pair.values.numpy().tolist() == values.numpy().tolist() and pair.indices is not None
    want = getattr(numpy, "arg" + op)(x, axis=1)
    assert indices.dtype == numpy.int64
    assert indices.numpy().tolist() == (numpy.expand_dims(want, 1) if keepdim else want).tolist()
    gradcheck(device, lambda u: getattr(u, op)(dim=-1).values, x)
    with pytest.raises(TypeError, match=f"a{op} reduces several"):
        getattr(t, op)(dim=(0, 1))
    with pytest.raises(TypeError, match="not both"):
        getattr(t, op)(dim=0, axis=0)


def test_max_splits_gradient_among_ties(device):
    x = leaf([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], device)
    x.amax(dim=1).backward(to_dev([6.0, 3.0], device))
    numpy.testing.assert_allclose(backend.to_numpy(x.grad), [[0, 3, 3], [1, 1, 1]])


@pytest.mark.parametrize("axis, error", [(2, ValueError), (-3, ValueError), ((0, -2), ValueError),
                                         (1.5, TypeError), ("0", TypeError)])
def test_bad_axis(device, axis, error):
    with pytest.raises(error, match="axis"):
        leaf(numpy.ones((2, 3)), device).sum(axis=axis)


# ---- shape ops ----------------------------------------------------------------------
SHAPE_OPS = {"reshape": lambda t: t.reshape(6, 4), "reshape -1": lambda t: t.reshape((-1,)),
             "T": lambda t: t.T, "transpose": lambda t: t.transpose(0, 2), "transpose negative": lambda t: t.transpose(-1, 1),
             "permute negative": lambda t: t.permute(-1, 0, 1), "flatten": lambda t: t.flatten(),
             "flatten 1": lambda t: t.flatten(1), "flatten 0..1": lambda t: t.flatten(0, 1),
             "flatten -2..-1": lambda t: t.flatten(-2, -1)}


@pytest.mark.parametrize("name", SHAPE_OPS)
def test_shape_ops(device, name):
    gradcheck(device, SHAPE_OPS[name], rng().standard_normal((2, 3, 4)))


def test_shape_op_results(device):
    x = numpy.arange(24.0).reshape(2, 3, 4)
    t = leaf(x, device)
    assert t.T.numpy().tolist() == x.T.tolist()
    assert t.permute(2, 0, 1).numpy().tolist() == x.transpose(2, 0, 1).tolist()
    assert t.flatten(1).shape == (2, 12) and t.flatten(0, 1).shape == (6, 4)
    with pytest.raises(ValueError, match="start_dim"):
        t.flatten(2, 1)
    # transpose is torch's: it swaps two dims (numpy's transpose(0, 1) of a 2-D array would keep its shape)
    assert t.transpose(0, 1).shape == (3, 2, 4) and t.transpose(1, 1).shape == (2, 3, 4)
    assert t.transpose(-1, 0).numpy().tolist() == x.swapaxes(-1, 0).tolist()
    assert leaf(numpy.zeros((2, 3)), device).transpose(0, 1).shape == (3, 2)
    with pytest.raises(TypeError):
        t.transpose(2, 0, 1)          # a full order is permute's
    with pytest.raises(TypeError):
        t.transpose()
    with pytest.raises(ValueError, match="dim1"):
        t.transpose(0, 3)


INDICES = {"int": lambda t: t[1], "slices, negative step": lambda t: t[1:, ::-2],
           "None, Ellipsis": lambda t: t[None, ..., 1], "negative steps and int": lambda t: t[::-1, 2:0:-1, -1],
           "repeated int array": lambda t: t[[0, 2, 0]],
           "two int arrays with repeats": lambda t: t[numpy.array([2, 0, 2, 2]), :, [1, 1, 3, 0]],
           "int Tensor": lambda t: t[cubn.tensor(numpy.array([1, 1]))],
           "bool mask": lambda t: t[numpy.array([True, False, True])]}


@pytest.mark.parametrize("name", INDICES)
def test_getitem(device, name):
    x = rng().standard_normal((3, 4, 5))
    gradcheck(device, INDICES[name], x)
    expected = INDICES[name](cubn.tensor(x)).numpy()  # the NumPy path: index semantics as numpy's
    numpy.testing.assert_array_equal(INDICES[name](leaf(x, device)).numpy(), expected)


def test_getitem_repeated_indices_accumulate(device):
    x = leaf(numpy.arange(4.0), device)
    x[[1, 1, 1, 3]].sum().backward()
    assert backend.to_numpy(x.grad).tolist() == [0.0, 3.0, 0.0, 1.0]


# ---- softmax family and cross-entropy ------------------------------------------------------
@pytest.mark.parametrize("fn", [M.softmax, M.log_softmax])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family(device, fn, axis):
    x = rng().standard_normal((2, 3, 4))
    gradcheck(device, lambda t: fn(t, axis), x)
    e = numpy.exp(x)
    p = e / e.sum(axis=axis, keepdims=True)
    expected = p if fn is M.softmax else numpy.log(p)
    numpy.testing.assert_allclose(fn(leaf(x, device), axis).numpy(), expected, rtol=1e-12)


def test_softmax_family_is_stable_for_large_inputs(device):
    x = leaf([[1000.0, 1001.0, -1000.0]], device)
    numpy.testing.assert_allclose(x.softmax().numpy(), [[1 / (1 + numpy.e), numpy.e / (1 + numpy.e), 0.0]])
    numpy.testing.assert_allclose(x.log_softmax().numpy()[0, :2], -numpy.log1p(numpy.exp([1.0, -1.0])))


def cross_entropy_reference(z, t, reduction, s):
    """float64 NumPy: -(1-s) log p_t - s * mean_k log p_k, p = softmax over axis 1."""
    k = z.shape[1]
    z = numpy.moveaxis(z, 1, -1).reshape(-1, k)
    logp = numpy.log(numpy.exp(z) / numpy.exp(z).sum(axis=1, keepdims=True))
    loss = -(1 - s) * logp[numpy.arange(len(z)), t.reshape(-1)] - s * logp.mean(axis=1)
    return {"none": loss.reshape(t.shape), "sum": loss.sum(), "mean": loss.mean()}[reduction]


CE_SHAPES = {"(N, K)": ((4, 5), (4,)), "(N, K, d1, d2)": ((2, 3, 2, 2), (2, 2, 2))}


@pytest.mark.parametrize("shapes", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy(device, shapes, reduction, smoothing):
    zshape, tshape = CE_SHAPES[shapes]
    z = rng(1).standard_normal(zshape)
    t = rng(2).integers(0, zshape[1], tshape)
    loss = lambda logits: M.cross_entropy(logits, to_dev(t, device), reduction, smoothing)  # noqa: E731
    gradcheck(device, loss, z)
    expected = cross_entropy_reference(z, t, reduction, smoothing)
    numpy.testing.assert_allclose(loss(leaf(z, device)).numpy(), expected, rtol=1e-12)


def test_cross_entropy_float32_and_large_logits(device):
    z = 1000.0 * rng(1).standard_normal((4, 5))
    t = numpy.array([0, 1, 2, 4])
    logits = leaf(z, device, numpy.float32)
    loss = M.cross_entropy(logits, cubn.tensor(to_dev(t, device)))
    loss.backward()
    assert loss.dtype == numpy.float32 and logits.grad.dtype == numpy.float32
    shifted = z - z.max(axis=1, keepdims=True)  # the reference must shift too at this scale
    expected = -(shifted[range(4), t] - numpy.log(numpy.exp(shifted).sum(axis=1))).mean()
    numpy.testing.assert_allclose(loss.item(), expected, rtol=1e-5)
    assert numpy.isfinite(backend.to_numpy(logits.grad)).all()


@pytest.mark.parametrize("logits_shape, target, kwargs, error, match", [
    ((4, 5), [0.0, 1.0, 2.0, 3.0], {}, TypeError, "target must hold integer"),
    ((4, 5), [True, False, True, False], {}, TypeError, "target must hold integer"),
    ((4, 5), [0, 1, 2], {}, ValueError, "target must have shape"),
    ((2, 5, 3), [0, 1], {}, ValueError, "target must have shape"),
    ((4, 5), [0, 1, 2, 5], {}, ValueError, r"class indices must lie in \[0, 5\)"),
    ((4, 5), [0, -1, 2, 3], {}, ValueError, "class indices"),
    ((5,), [0], {}, ValueError, "logits must have shape"),
    ((4, 5), [0, 1, 2, 3], {"reduction": "avg"}, ValueError, "reduction"),
    ((4, 5), [0, 1, 2, 3], {"label_smoothing": 1.0}, ValueError, "label_smoothing"),
    ((4, 5), [0, 1, 2, 3], {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
])
def test_cross_entropy_rejects_bad_arguments(device, logits_shape, target, kwargs, error, match):
    logits = leaf(numpy.zeros(logits_shape), device)
    with pytest.raises(error, match=match):
        M.cross_entropy(logits, to_dev(target, device), **kwargs)
