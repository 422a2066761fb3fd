"""The reduction helpers of the NumPy twins (cubn/ref/common.py) against float64 sums.

They exist for the CPU path's speed (docs/cpu.md); these tests hold them to the accuracy of the
plain sums they replace, on the twins' shapes, on long rows, and through the fallback taken where
the array module has no ``vecdot`` (NumPy 1.x).
"""
import types

import numpy as np
import pytest

from cubn.ref import common
from cubn.ref.common import channel_dot, channel_sum, row_dot, row_sum

SHAPES = [(64, 32, 64), (64, 64, 16), (3, 5, 1), (1, 1, 7), (2, 1, 2 ** 18), (2 ** 14, 3, 1), (0, 4, 5), (4, 0, 5)]


def arrays(shape, dtype, seed=0):
    r = np.random.default_rng(seed)
    # an offset, so that a sum that drifts with the number of terms shows it
    return [(r.standard_normal(shape) + 3).astype(dtype) for _ in range(2)]


def close(actual, exact, dtype):
    # float32: sums along the contiguous axis are pairwise or blocked (~1e-7 even over 2**18 terms);
    # over the batch axis NumPy adds rows in order, as ``a.sum(axis=(0, 2))`` always did here, which
    # drifts to ~2e-6 over 2**14 rows. The bar is the same for both.
    scale = np.maximum(np.abs(exact), 1)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    assert actual.dtype == dtype
    np.testing.assert_array_less(np.abs(actual - exact) / scale, rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channel_sums_match_float64(shape, dtype):
    a, b = arrays(shape, dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    close(channel_sum(a), a64.sum(axis=(0, 2)), dtype)
    close(channel_dot(a, b), (a64 * b64).sum(axis=(0, 2)), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_sums_match_float64(shape, dtype):
    a, b = arrays(shape, dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert row_dot(a, b).shape == row_sum(a).shape == shape[:2]
    close(row_sum(a), a64.sum(axis=-1), dtype)
    close(row_dot(a, b), (a64 * b64).sum(axis=-1), dtype)


def test_row_dot_without_vecdot_takes_the_pairwise_sum(monkeypatch):
    # NumPy 1.x (and a CuPy without vecdot): the product, summed along the row
    no_vecdot = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if k != "vecdot"})
    assert not hasattr(no_vecdot, "vecdot")
    monkeypatch.setattr(common, "get_array_module", lambda a: no_vecdot)
    a, b = arrays((2, 1, 2 ** 18), np.float32)
    close(row_dot(a, b), (a.astype(np.float64) * b).sum(axis=-1), np.float32)


def test_non_finite_values_propagate():
    a = np.ones((2, 3, 4), np.float32)
    a[0, 1, 2], a[1, 2, 0] = np.nan, np.inf
    assert np.isnan(channel_sum(a)[1]) and np.isposinf(channel_sum(a)[2]) and channel_sum(a)[0] == 8
    assert np.isnan(channel_dot(a, a)[1]) and np.isposinf(channel_dot(a, a)[2]) and channel_dot(a, a)[0] == 8
    assert np.isnan(row_sum(a)[0, 1]) and np.isposinf(row_sum(a)[1, 2]) and row_sum(a)[0, 0] == 4
    assert np.isnan(row_dot(a, a)[0, 1]) and np.isposinf(row_dot(a, a)[1, 2]) and row_dot(a, a)[0, 0] == 4
