"""Making tensors with PyTorch's names and defaults: ``zeros``, ``ones``, ``full``, ``empty``, ``zeros_like``,
``ones_like``, ``full_like``, ``randn``, ``rand``, ``arange``, ``linspace``, ``from_numpy``, ``from_dlpack``, and the dtype
names ``float16``, ``float32``, ``float64``, ``int64``, ``bool``.

As in PyTorch, sizes are given as ``zeros(2, 3)`` or ``zeros((2, 3))``, floating results default to
float32, ``arange`` of integers gives int64 and ``full`` takes its dtype from the fill value; the
keywords are ``dtype=``, ``device=`` ("cpu" or "cuda") and ``requires_grad=``. ``randn`` and ``rand``
draw from cubn's global generator, so ``cubn.manual_seed`` makes them repeatable.
"""
import numbers

import numpy

from . import backend
from .random import get_rng
from .tensor import Tensor

float16, float32, float64, int64, bool_ = numpy.float16, numpy.float32, numpy.float64, numpy.int64, numpy.bool_


def _size(size, fn):
    size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in size):
        raise ValueError(f"{fn}: sizes must be integers >= 0, got {size}")
    return size


def _make(data, dtype, device, requires_grad):
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Tensor(backend.to_device(data, device) if device else data, requires_grad=requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    return _make(numpy.zeros(_size(size, "zeros"), dtype or float32), None, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    return _make(numpy.ones(_size(size, "ones"), dtype or float32), None, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    return _make(numpy.empty(_size(size, "empty"), dtype or float32), None, device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    """dtype None: bool for a bool fill, int64 for an integer, float32 for a float (torch's inference)."""
    if dtype is None:
        dtype = bool_ if isinstance(fill_value, bool) else int64 if isinstance(fill_value, numbers.Integral) else float32
    return _make(numpy.full(_size((size,), "full"), fill_value, dtype), None, device, requires_grad)


def _like(t, fill, dtype, device, requires_grad):
    xp = backend.get_array_module(t.data)
    data = xp.full(t.shape, fill, dtype or t.dtype)
    return Tensor(backend.to_device(data, device) if device else data, requires_grad=requires_grad)


def zeros_like(input, dtype=None, device=None, requires_grad=False):
    return _like(input, 0, dtype, device, requires_grad)


def ones_like(input, dtype=None, device=None, requires_grad=False):
    return _like(input, 1, dtype, device, requires_grad)


def full_like(input, fill_value, dtype=None, device=None, requires_grad=False):
    return _like(input, fill_value, dtype, device, requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from cubn's global generator."""
    return _make(get_rng().standard_normal(_size(size, "randn")), dtype or float32, device, requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False):
    """Uniform samples in [0, 1) from cubn's global generator."""
    return _make(get_rng().random(_size(size, "rand")), dtype or float32, device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """``arange(end)`` or ``arange(start, end, step)``: int64 when all three are integers, else float32."""
    if end is None:
        start, end = 0, start
    integral = all(isinstance(v, numbers.Integral) for v in (start, end, step))
    return _make(numpy.arange(start, end, step), dtype or (int64 if integral else float32), device, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    return _make(numpy.linspace(start, end, steps), dtype or float32, device, requires_grad)


def from_dlpack(x):
    """A tensor sharing memory with ``x``, any object with ``__dlpack__`` (a torch, JAX, NumPy or CuPy
    array): NumPy's for host memory, CuPy's for a CUDA device (as ``torch.from_dlpack``)."""
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"from_dlpack takes an object with __dlpack__, got {type(x).__name__}")
    device_type = x.__dlpack_device__()[0]
    if device_type == 1:                                  # kDLCPU
        return Tensor(numpy.from_dlpack(x))
    if device_type in (2, 3) and backend.cupy is not None:   # kDLCUDA, kDLCUDAHost
        return Tensor(backend.cupy.from_dlpack(x))
    raise BufferError(f"from_dlpack: DLPack device type {device_type} is not the CPU or a CUDA device cubn can use")


def from_numpy(array):
    """A tensor that shares memory with the NumPy ``array`` (as ``torch.from_numpy``)."""
    if not isinstance(array, numpy.ndarray):
        raise TypeError(f"from_numpy takes a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array)
