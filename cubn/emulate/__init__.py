"""The kernel emulator: the real ``kernels/*.cu`` and the real launchers in ``cubn/cuda/``, run on the CPU.

``CUBN_KERNELS=emulate`` makes ``cubn.cuda.loader`` compile kernel files with the host
C++ compiler instead of NVRTC (``build.py``, with ``cuda_host.h`` supplying the CUDA
names) and hand the launchers ``RawModule``/``RawKernel`` stand-ins (``kernel.py``) that
take NumPy arrays. The launchers' code is the one that runs on a GPU; only the array
module differs. ``cubn.ops`` then sends NumPy arrays through ``cubn.cuda``, so every
normalization layer runs the CUDA kernels.

What it checks (``runtime.cpp``): barriers reached by every thread at the same line,
warp shuffles and votes between lanes that all arrived at the same call, reads and
writes inside each argument's allocation, shared memory poisoned before each block,
outputs bitwise equal under several thread schedules, argument types against the C
signature and CUDA's launch limits. What it cannot show: timing, memory coalescing,
real warp scheduling and its races inside a warp, NVRTC's code generation (such as its
fused multiply-adds, which change results in the last bits), and CuPy's own marshalling
of arguments. See kernels/README.md for running one kernel, printf and gdb.
"""
import functools

from .build import BuildError, compiler
from .kernel import EmulatorError, LaunchError, RawKernel, RawModule

__all__ = ["BuildError", "EmulatorError", "LaunchError", "RawKernel", "RawModule", "available"]


@functools.lru_cache(maxsize=None)
def available():
    """True where a C++ compiler is there to build kernels for the emulator."""
    try:
        compiler()
        return True
    except BuildError:
        return False
