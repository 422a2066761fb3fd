"""Finite-difference gradient checks with a random upstream gradient.

The loss is L = sum(f(inputs) * dy) with a random dy. A plain sum or mean is
blind to dx in every normalization (normalized values sum to zero per group),
so a checker built on it would accept dx = 0. Float64 only.
"""
import numpy

import cubn


def numerical_grads(f, arrays, dy, h=1e-6):
    """Central differences of sum(f(*arrays) * dy) w.r.t. each float64 array; f returns an array."""
    grads = []
    for a in arrays:
        g = numpy.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)  # views: a must be contiguous
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = numpy.sum(f(*arrays) * dy)
            flat[i] = old - h
            down = numpy.sum(f(*arrays) * dy)
            flat[i] = old
            gflat[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def assert_grads_close(analytic, numeric, names=None, rtol=1e-5, atol=1e-6):
    """Raise AssertionError naming the first input whose analytic gradient is off."""
    names = names or [f"input {i}" for i in range(len(numeric))]
    for name, a, n in zip(names, analytic, numeric):
        a = numpy.asarray(a)
        assert a.shape == n.shape, f"grad of {name}: shape {a.shape}, expected {n.shape}"
        err = numpy.abs(a - n) - (atol + rtol * numpy.abs(n))
        assert (err <= 0).all(), (f"grad of {name} differs from finite differences: "
                                  f"max abs diff {numpy.abs(a - n).max():.3e}")


def check_autodiff(fn, *arrays, seed=0, rtol=1e-5, atol=1e-6, h=1e-6):
    """Check cubn's backward of ``fn`` (Tensors -> Tensor) against finite differences.

    ``arrays`` are float64 NumPy arrays; each becomes a Tensor with requires_grad.
    """
    arrays = [numpy.ascontiguousarray(a, dtype=numpy.float64) for a in arrays]
    tensors = [cubn.tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    dy = numpy.random.default_rng(seed).standard_normal(out.shape)
    out.backward(dy)

    def f(*arrs):
        with cubn.no_grad():
            return fn(*[cubn.tensor(a) for a in arrs]).numpy()

    numeric = numerical_grads(f, arrays, dy, h)
    analytic = [t.grad if t.grad is not None else numpy.zeros_like(a) for t, a in zip(tensors, arrays)]
    assert_grads_close([cubn.backend.to_numpy(g) for g in analytic], numeric, rtol=rtol, atol=atol)
