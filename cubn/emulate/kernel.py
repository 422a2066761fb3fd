"""Stand-ins for ``cupy.RawModule`` and ``cupy.RawKernel`` that run kernels on the CPU.

``RawModule(code=..., options=...).get_function(name)`` gives a ``RawKernel`` that is
called as CuPy's is, ``kernel(grid, block, args, shared_mem=0)``, with NumPy arrays where
CuPy takes CuPy arrays. Before anything runs, the call is checked the way a GPU would
punish it, silently or not:

* every argument against the kernel's C parameter (read off the compiled function's type):
  a pointer takes a C-contiguous array of exactly the element type (an empty array is the
  null pointer, as on CuPy); a scalar takes a NumPy scalar of exactly the C type. A Python
  float would reach the kernel as an 8-byte double and a Python int as an 8-byte integer,
  so both are refused, as are ``numpy.uint64(0)`` "null pointers" and overlapping arrays;
* CUDA's launch limits: block dimensions (1024, 1024, 64) and at most 1024 threads, or the
  kernel's ``__launch_bounds__``; grid.x < 2^31, grid.y and grid.z <= 65535; static plus
  dynamic shared memory within 48 KiB unless ``max_dynamic_shared_size_bytes`` opts in.

Then ``runtime.cpp`` runs the grid under each schedule of ``$CUBN_EMULATE_SCHEDULES``
(default ``forward,reverse``; also ``random:SEED``) with the barrier, warp, bounds and
shared-memory checks on, and writes the results back into the arrays.
"""
import ctypes
import os
import threading

import numpy

from . import build

DEFAULT_SHARED_LIMIT = 48 * 1024      # bytes of shared memory a block gets without opting in
OPT_IN_SHARED_LIMIT = 227 * 1024      # the most an H100 block can opt in to
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2 ** 31 - 1, 65535, 65535)

# kernel_info.h Kind -> the NumPy dtype of an argument of that C type
KIND_DTYPES = {1: "float16", 2: "float32", 3: "float64", 4: "int8", 5: "uint8", 6: "int16", 7: "uint16",
               8: "int32", 9: "uint32", 10: "int64", 11: "uint64", 12: "bool"}
STRUCT = 0

_launch_lock = threading.Lock()   # the runtime keeps one launch's state in globals


class EmulatorError(RuntimeError):
    """A kernel did what is an error or undefined on a GPU; the message names kernel, thread and line."""


class LaunchError(EmulatorError):
    """A launch that a GPU would reject, or that would pass arguments the kernel does not declare."""


class _Param(ctypes.Structure):
    _fields_ = [("pointer", ctypes.c_int), ("is_const", ctypes.c_int), ("kind", ctypes.c_int),
                ("size", ctypes.c_int), ("align", ctypes.c_int)]


class _KernelInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("max_threads", ctypes.c_int), ("params", ctypes.c_char_p),
                ("nparams", ctypes.c_int), ("param", _Param * 40), ("invoke", ctypes.c_void_p)]


class _Arg(ctypes.Structure):
    _fields_ = [("host", ctypes.c_void_p), ("nbytes", ctypes.c_uint64), ("name", ctypes.c_char_p)]


def schedules():
    """The thread schedules of $CUBN_EMULATE_SCHEDULES as the runtime's codes (0, 1, seed + 2)."""
    codes = []
    for item in os.environ.get("CUBN_EMULATE_SCHEDULES", "forward,reverse").split(","):
        item = item.strip()
        if item in ("forward", "reverse"):
            codes.append(0 if item == "forward" else 1)
        elif item.startswith("random:") and item[7:].isdigit():
            codes.append(int(item[7:]) + 2)
        else:
            raise ValueError(f"CUBN_EMULATE_SCHEDULES: expected forward, reverse or random:SEED items, got {item!r}")
    return codes


def timeout():
    return float(os.environ.get("CUBN_EMULATE_TIMEOUT", "120"))


def _dims(name, what, value):
    dims = (value,) if isinstance(value, (int, numpy.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(isinstance(d, bool) or not isinstance(d, (int, numpy.integer)) for d in dims):
        raise LaunchError(f"{name}: {what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if min(dims) < 1:
        raise LaunchError(f"{name}: every {what} dimension must be >= 1, got {dims}")
    return dims


def _type_name(value):
    return type(value).__module__.replace("builtins", "Python") + "." + type(value).__name__


class RawKernel:
    """One ``extern "C" __global__`` function of a RawModule, launched as ``kernel(grid, block, args)``."""

    def __init__(self, module, name, params_text):
        self.module = module
        self.name = name
        fn = getattr(module.library, "cubn_emu_info_" + name)
        fn.restype = ctypes.POINTER(_KernelInfo)
        self._info = fn()
        info = self._info.contents
        self.max_threads_per_block = info.max_threads
        self.params = [info.param[i] for i in range(info.nparams)]
        declared = info.params.decode()                     # with the macros expanded: "const float* x"
        self.declarations = [p.strip() for p in declared.split(",")] if declared.strip() else []
        self.param_names = [d.replace("*", " ").split()[-1] for d in self.declarations]
        if len(self.param_names) != len(self.params):
            raise EmulatorError(f"{name}: could not read the names of its parameters from {params_text!r}")
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_LIMIT - module.static_shared_bytes

    def __repr__(self):
        return f"<emulated RawKernel {self.name}({', '.join(self.declarations)})>"

    # ------------------------------------------------------------------ checks
    def _check_launch(self, grid, block, shared_mem):
        grid, block = _dims(self.name, "grid", grid), _dims(self.name, "block", block)
        for axis, (b, limit) in enumerate(zip(block, MAX_BLOCK_DIM)):
            if b > limit:
                raise LaunchError(f"{self.name}: blockDim.{'xyz'[axis]} = {b} exceeds CUDA's {limit}")
        threads = block[0] * block[1] * block[2]
        if threads > min(1024, self.max_threads_per_block):
            raise LaunchError(f"{self.name}: a block of {threads} threads {block} exceeds "
                              + (f"its __launch_bounds__({self.max_threads_per_block})"
                                 if self.max_threads_per_block < 1024 else "CUDA's 1024 threads per block"))
        for axis, (g, limit) in enumerate(zip(grid, MAX_GRID_DIM)):
            if g > limit:
                raise LaunchError(f"{self.name}: gridDim.{'xyz'[axis]} = {g} exceeds CUDA's {limit}")
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, numpy.integer)) or shared_mem < 0:
            raise LaunchError(f"{self.name}: shared_mem must be an int >= 0, got {shared_mem!r}")
        limit = min(max(self.max_dynamic_shared_size_bytes, DEFAULT_SHARED_LIMIT - self.module.static_shared_bytes),
                    OPT_IN_SHARED_LIMIT - self.module.static_shared_bytes)
        if shared_mem > limit:
            raise LaunchError(f"{self.name}: {shared_mem} bytes of dynamic shared memory exceed the {limit} "
                              f"available ({self.module.static_shared_bytes} static; set "
                              f"max_dynamic_shared_size_bytes to opt in beyond 48 KiB)")
        return grid, block

    def _check_arg(self, i, value, keep):
        """The runtime's _Arg for argument i; ``keep`` holds the scalar buffers alive for the call."""
        p, name, decl = self.params[i], self.param_names[i], self.declarations[i]
        where = f"{self.name}: argument {i} ({decl})"
        if p.pointer:
            if not isinstance(value, numpy.ndarray):
                hint = (" (a null pointer is an empty array, not an integer: on a GPU this value is read as "
                        "whatever the scalar's bytes are)" if isinstance(value, (int, numpy.integer)) else "")
                raise LaunchError(f"{where} is a pointer and takes an array, got {_type_name(value)}{hint}")
            want = KIND_DTYPES.get(p.kind)
            if p.kind == STRUCT:
                if value.nbytes % p.size:
                    raise LaunchError(f"{where}: {value.nbytes} bytes are not a whole number of its "
                                      f"{p.size}-byte elements")
            elif value.dtype != numpy.dtype(want):
                raise LaunchError(f"{where} points to {want}, got an array of {value.dtype}")
            if not value.flags.c_contiguous:
                raise LaunchError(f"{where}: the array is not C-contiguous (a RawKernel ignores strides)")
            if value.size == 0:
                return _Arg(None, 0, name.encode())
            return _Arg(value.ctypes.data, value.nbytes, name.encode())
        want = numpy.dtype(KIND_DTYPES.get(p.kind, "V"))
        if not isinstance(value, numpy.generic):
            sent = {float: "an 8-byte double", int: "an 8-byte integer", bool: "a 1-byte bool"}.get(type(value))
            raise LaunchError(f"{where} takes a numpy.{want.name}, got {_type_name(value)} {value!r}"
                              + (f" (CuPy would pass it as {sent}, which a GPU reads as the declared "
                                 f"{want.itemsize}-byte value, shifting every later argument if the sizes differ)"
                                 if sent else ""))
        if value.dtype != want:
            raise LaunchError(f"{where} takes a numpy.{want.name} ({want.itemsize} bytes), got numpy.{value.dtype.name}"
                              f" ({value.dtype.itemsize} bytes)")
        buf = numpy.array(value)
        keep.append(buf)
        return _Arg(buf.ctypes.data, buf.nbytes, name.encode())

    @staticmethod
    def _check_overlap(name, args, arrays):
        spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes, n) for a, n in arrays if a.nbytes)
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise LaunchError(f"{name}: arguments {n0} and {n1} overlap; the emulator gives every argument "
                                  f"its own allocation, so pass separate arrays")

    def __call__(self, grid, block, args, *, shared_mem=0):
        grid, block = self._check_launch(grid, block, shared_mem)
        args = tuple(args)
        if len(args) != len(self.params):
            raise LaunchError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.declarations)}), "
                              f"got {len(args)}")
        keep = []
        packed = (_Arg * max(1, len(args)))(*[self._check_arg(i, a, keep) for i, a in enumerate(args)])
        self._check_overlap(self.name, args, [(a, self.param_names[i]) for i, a in enumerate(args)
                                               if self.params[i].pointer and isinstance(a, numpy.ndarray)])
        codes = schedules()
        err = ctypes.create_string_buffer(4096)
        with _launch_lock:
            rc = self.module.library.cubn_emu_launch(
                self._info, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), packed,
                (ctypes.c_long * len(codes))(*codes), len(codes), ctypes.c_double(timeout()), err, len(err))
        if rc:
            raise EmulatorError(err.value.decode(errors="replace"))


class RawModule:
    """A kernel source compiled for the host (``build.build``); ``get_function`` as on ``cupy.RawModule``."""

    def __init__(self, code, options=()):
        path, found = build.build(code, options)
        self.path = path
        self.library = ctypes.CDLL(str(path))
        self.library.cubn_emu_launch.restype = ctypes.c_int
        self.library.cubn_emu_static_shared_bytes.restype = ctypes.c_size_t
        self.static_shared_bytes = self.library.cubn_emu_static_shared_bytes()
        self._params = {name: params for name, _, params in found}
        self._kernels = {}

    def get_function(self, name):
        if name not in self._params:
            raise EmulatorError(f"no kernel named {name!r} in this module; it defines {sorted(self._params)}")
        if name not in self._kernels:
            self._kernels[name] = RawKernel(self, name, self._params[name])
        return self._kernels[name]
