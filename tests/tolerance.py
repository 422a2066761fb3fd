"""Tolerance table for comparing float16/32/64 results with a float64 reference.

|actual - expected| <= atol + rtol * |expected|, elementwise. Values are
per input dtype; outputs are compared after casting to float64.
"""
import numpy

from cubn import backend

TOL = {
    numpy.dtype(numpy.float64): (1e-10, 1e-9),
    numpy.dtype(numpy.float32): (2e-5, 2e-4),
    numpy.dtype(numpy.float16): (5e-3, 5e-3),
}


def assert_close(actual, expected, dtype, name="value", scale=1.0):
    """Compare under the tolerance of ``dtype``; ``scale`` widens it for long or ill-conditioned sums."""
    atol, rtol = TOL[numpy.dtype(dtype)]
    a = backend.to_numpy(actual).astype(numpy.float64)
    e = backend.to_numpy(expected).astype(numpy.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape}, expected {e.shape}"
    assert numpy.isfinite(a).all() == numpy.isfinite(e).all(), f"{name}: non-finite values differ"
    bad = numpy.abs(a - e) > scale * (atol + rtol * numpy.abs(e))
    assert not bad.any(), (f"{name} ({numpy.dtype(dtype)}): {bad.sum()} of {bad.size} values off, "
                           f"max abs diff {numpy.abs(a - e).max():.3e}")
