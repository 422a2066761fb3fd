"""Settings of the CPU path: its threads (``cubn.set_num_threads(n)``, ``cubn.get_num_threads()``) and
how the C library reuses freed memory (``cubn.cpu.keep_freed_memory()``).

Threads
-------

On the CPU, cubn's arrays are NumPy's, and the only part of NumPy that runs on several threads
is its BLAS (OpenBLAS in the NumPy wheels), behind the matrix products of Conv2d and Linear.
These two functions set and read that thread count for the whole process, through
threadpoolctl, as ``torch.set_num_threads`` / ``torch.get_num_threads`` do for PyTorch's CPU
kernels. Everything else cubn runs on the CPU (the norms, pooling, elementwise ops) is
single-threaded NumPy whatever this says.

Importing cubn leaves the count as it is (NumPy's default: one thread per core). The ``cubn train``
and ``cubn eval`` commands set it from ``--threads`` (default 1, see ``docs/cpu.md`` for why and
the measurements), and the test suite runs at 1 thread.

Freed memory
------------
A training step allocates and frees the same large arrays (im2col columns, activations, gradients)
over and over. glibc's malloc serves blocks above its mmap threshold (128 KiB at first, raised as
large blocks are freed, up to 32 MiB) straight from the OS and gives them back when freed, and it
trims the top of its heap when enough is free there: each time, the next allocation of that size
maps fresh pages, one page fault per 4 KiB. Which arrays pay this depends on the order of earlier
allocations, so the same step took 11.9 ms or 15.0 ms in two runs of the benchmark.
``keep_freed_memory()`` fixes both thresholds (blocks up to 32 MiB come from the heap, and up to
128 MiB of free heap top is kept), so freed blocks are reused without page faults: the process may
hold that much more memory than it uses. ``cubn train``, the CPU benchmark and the test suite call
it; a script of yours may too. It changes the whole process (PyTorch in it gets the same), only on
Linux with glibc; elsewhere it does nothing and returns False.
"""
import ctypes
import ctypes.util

import threadpoolctl

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc's <malloc.h>

_controller = None


def _blas():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (NumPy's, and any other)."""
    global _controller
    if _controller is None:
        import numpy  # noqa: F401  -- NumPy's BLAS must be loaded for threadpoolctl to find it
        _controller = threadpoolctl.ThreadpoolController().select(user_api="blas")
    return _controller


def set_num_threads(n):
    """Use ``n`` BLAS threads from now on (every BLAS library loaded in this process)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    _blas().limit(limits=n)


def get_num_threads():
    """The BLAS thread count in use (the largest, if several BLAS libraries disagree); 1 without a BLAS."""
    return max((lib.num_threads for lib in _blas().lib_controllers), default=1)


def keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=128 << 20):
    """Ask glibc's malloc to serve blocks up to ``mmap_threshold`` bytes from its heap and to keep up to
    ``trim_threshold`` bytes free at its top (see the module docstring); True when it took both."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
                    and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)))
    except (OSError, AttributeError):      # no C library by that name, or one without mallopt
        return False
