"""Find, prepare and compile the CUDA sources in ``kernels/``.

A kernel file is plain device code. Before compiling, the loader prepends the
``#define``s that pick the element type, then ``#line 1 "kernels/<file>"`` so
that compiler messages name the real file and line. Sources are found in the
installed package (``cubn/kernels``, carried by the wheel) first, then in the
checkout (``<repo>/kernels``).

Element types are chosen by two defines (``dtype_defines``):

    T    storage type of x, y, dx, dy: float, double or half_t (float16 bits, see common.cuh)
    ACC  accumulation and statistics type: float, or double for float64 input

Compiled modules are cached per (file, defines, device), so each combination
compiles once per process (and CuPy keeps its own on-disk cache as well).

``CUBN_KERNELS=emulate`` compiles the same sources for the CPU instead (``cubn.emulate``):
``module`` then returns the emulator's RawModule, and the launchers' arrays are NumPy
arrays (``array_module``). The launchers ask this module, never CuPy directly, which
arrays they take, so the code that runs on the emulator is the code that runs on a GPU.
"""
import functools
import os
import pathlib

import numpy

_PACKAGE_KERNELS = pathlib.Path(__file__).resolve().parent.parent / "kernels"
_CHECKOUT_KERNELS = pathlib.Path(__file__).resolve().parent.parent.parent / "kernels"

# dtype -> the defines its kernels are compiled with (the full list the launchers use)
DTYPE_DEFINES = {
    numpy.dtype(numpy.float16): {"T": "half_t", "ACC": "float"},
    numpy.dtype(numpy.float32): {"T": "float", "ACC": "float"},
    numpy.dtype(numpy.float64): {"T": "double", "ACC": "double"},
}


def kernel_dir():
    """The folder holding the .cu files: package data if installed, else the checkout's kernels/."""
    for d in (_PACKAGE_KERNELS, _CHECKOUT_KERNELS):
        if (d / "common.cuh").is_file():
            return d
    raise FileNotFoundError(f"CUDA sources not found in {_PACKAGE_KERNELS} or {_CHECKOUT_KERNELS}")


def dtype_defines(dtype):
    """The T/ACC defines for an input dtype; TypeError for anything but float16/32/64."""
    try:
        return DTYPE_DEFINES[numpy.dtype(dtype)]
    except KeyError:
        raise TypeError(f"CUDA kernels take float16, float32 or float64 input, got {numpy.dtype(dtype)}") from None


def source(file, defines=None):
    """The text the compiler sees: defines, a #line naming kernels/<file>, then the file."""
    text = (kernel_dir() / file).read_text(encoding="ascii")
    head = "".join(f"#define {k} {v}\n" for k, v in sorted((defines or {}).items()))
    return f'{head}#line 1 "kernels/{file}"\n{text}'


def options():
    """NVRTC options shared by CuPy compiles and the CPU-only compile check."""
    return ("-std=c++17", f"-I{kernel_dir()}")


def emulating():
    """True under ``CUBN_KERNELS=emulate``: kernels run on the CPU emulator, on NumPy arrays."""
    return os.environ.get("CUBN_KERNELS") == "emulate"


def array_module():
    """The module of the arrays the launchers take and return: cupy, or numpy under the emulator."""
    if emulating():
        return numpy
    import cupy
    return cupy


def is_device_array(a):
    """Whether ``a`` is an array the kernels can take (a CuPy array; a NumPy array under the emulator)."""
    return isinstance(a, array_module().ndarray)


def device_array_name():
    return "numpy.ndarray (CUBN_KERNELS=emulate)" if emulating() else "cupy.ndarray"


def null(dtype):
    """A null pointer argument: an empty array, whose data pointer CuPy (and the emulator) pass as 0.

    Not None (CuPy would pass a null *address of the argument*, which the driver dereferences) and
    not an integer 0 (a scalar, not a pointer, to the emulator's signature check).
    """
    return array_module().empty(0, dtype)


def get_function(file, name, defines=None):
    """The compiled ``extern "C" __global__`` function ``name`` of ``file`` for the current device."""
    return module(file, defines).get_function(name)


def module(file, defines=None):
    """The RawModule of ``file`` with ``defines`` for the current device (compiled at first use)."""
    items = tuple(sorted((defines or {}).items()))
    if emulating():
        return _emulated_module(file, items, str(kernel_dir()))
    import cupy
    return _module(file, items, cupy.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _module(file, define_items, device_id):
    import cupy
    return cupy.RawModule(code=source(file, dict(define_items)), options=options())


@functools.lru_cache(maxsize=None)
def _emulated_module(file, define_items, folder):
    from cubn import emulate
    return emulate.RawModule(code=source(file, dict(define_items)), options=options())
