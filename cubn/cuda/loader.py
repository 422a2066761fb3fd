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
"""
import functools
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


def get_function(file, name, defines=None):
    """The compiled ``extern "C" __global__`` function ``name`` of ``file`` for the current device."""
    return module(file, defines).get_function(name)


def module(file, defines=None):
    """The ``cupy.RawModule`` of ``file`` with ``defines`` for the current device (compiled at first use)."""
    import cupy
    return _module(file, tuple(sorted((defines or {}).items())), cupy.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _module(file, define_items, device_id):
    import cupy
    return cupy.RawModule(code=source(file, dict(define_items)), options=options())
