"""Compiled CPU loops for every norm (Numba): the fast CPU path beside the NumPy twins.

Each module here exports the functions of its ``cubn/ref`` namesake with the same
signatures and results (within the twins' tolerances), so ``cubn.ops.norm.kernel_module``
can hand NumPy arrays to it instead of the twin. Where the twin makes one NumPy
pass over memory per operation (about 7 for a LayerNorm forward, 11 for its
backward), a loop here makes two: the statistics, then the transform; in the
backward the sums, then dx. They are written like the CUDA kernels they stand
beside, one row (rownorm) or one channel (batchnorm) at a time, in plain Python
that Numba compiles on first use and caches on disk.

Sums run in float64 whatever the input dtype, so long rows need no blocking to stay
as accurate as the twins' float32 sums. ``fastmath`` is limited to reassociation and
contraction (which lets those sums vectorize); NaN and inf keep their meaning, so the
non-finite contract of ``cubn/ref`` holds. float16 input goes to the twin.

This path is used when Numba is importable (``pip install "cubn[cpu]"``) and
``CUBN_KERNELS`` is not ``ref``; ``available()`` says whether it is.
"""
import functools
import importlib.util
import warnings

import numpy

# Dtypes the loops are compiled for; anything else is handed to the NumPy twin.
DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


@functools.lru_cache(maxsize=None)
def available():
    """True when Numba imports (the loops compile on first call). A Numba that is installed but does
    not import (built for another NumPy, say) gives a warning and the twins, not a failed training run."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        import numba  # noqa: F401
    except Exception as e:   # ImportError, or what a broken install raises
        warnings.warn(f"Numba is installed but does not import ({e}); the norms run on the NumPy twins",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def loop(fn):
    """Compile ``fn`` with Numba: no Python objects, cached on disk, sums allowed to vectorize.

    Where no folder is writable for Numba's cache (a read-only install without a home folder, say;
    Numba refuses ``cache=True`` there), the loops compile afresh in each process instead."""
    import numba

    options = {"nogil": True, "fastmath": {"reassoc", "contract"}}
    try:
        return numba.njit(fn, cache=True, **options)
    except RuntimeError:    # "cannot cache function ...: no locator available"
        return numba.njit(fn, **options)


def param(p, fill, size, dtype):
    """gamma or beta as an array of ``dtype``; None (the layer has no affine) means ``size`` copies of ``fill``."""
    return numpy.full(size, fill, dtype) if p is None else p.astype(dtype, copy=False)


def compiled(x):
    """True when the loops take this array's dtype (float32, float64)."""
    return x.dtype in DTYPES
