"""Settings of the CPU path: its threads (``cubn.set_num_threads(n)``, ``cubn.get_num_threads()``).

Threads
-------

On the CPU, cubn's arrays are NumPy's, and the only part of NumPy that runs on several threads
is its BLAS (OpenBLAS in the NumPy wheels), behind the matrix products of Conv2d and Linear.
These two functions set and read that thread count for the whole process, through
threadpoolctl, as ``torch.set_num_threads`` / ``torch.get_num_threads`` do for PyTorch's CPU
kernels. Everything else cubn runs on the CPU (the norms, pooling, elementwise ops) is
single-threaded NumPy whatever this says.

cubn leaves the count alone unless told: ``cubn train`` takes ``--threads`` (default 1, see
``docs/cpu.md`` for why and the measurements), and the test suite runs at 1 thread.

"""
import threadpoolctl

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

