"""Data-parallel communication for cubn: one small interface over MPI, NCCL and a local one-process backend.

    init(backend="auto" | "mpi" | "nccl" | "local")  -> the backend in use
    rank(), world_size(), barrier()
    all_reduce(x, op="sum" | "max" | "min")  -> the elementwise reduction over every rank's x
    all_gather(x)                            -> (world_size, *x.shape): every rank's x, in rank order
    broadcast(x, root=0)                     -> root's x on every rank
    all_gather_object(obj)                   -> [every rank's obj] (small JSON-like values; pickled by mpi4py)

Arrays are NumPy or CuPy arrays, and the result is on x's device: the MPI backend carries host
buffers (a CuPy array is copied to the host and back), the NCCL backend carries CuPy buffers on
the current stream (NumPy arrays are copied to the GPU and back). Every call returns a new array
and leaves x alone. Collectives check that all ranks pass the same shape and dtype, and fail on
every rank at once with the same message when they do not (a mismatched buffer would hang or
corrupt). That check is one small object all_gather per call on MPI; ``CHECK_LAYOUTS = False``
turns it off once a program is known to be right.

A sum is exact in one sense that MPI's own does not promise: ``all_reduce(x, "sum")`` gathers every
rank's x and adds them in rank order, so the result is bitwise the same on every rank, for any
number of ranks (MPI_Allreduce may combine partial sums in a different order on different ranks,
and floating-point addition is not associative). It moves world_size times the data of a
reduce-scatter; cubn's reductions are a few kilobytes per BatchNorm layer and one gradient bucket
at a time.

A run is started with ``mpiexec -n 4 python -m mpi4py train.py``. The ``-m mpi4py`` form matters:
an uncaught exception in one rank then calls MPI_Abort and ends the whole job, where a plain
``python train.py`` would leave the other ranks waiting forever in their next collective.
``pip install "cubn[dist]"`` brings mpi4py and an MPI (the mpich wheel, with its ``mpiexec``). One
process without MPI installed works as before: ``init("auto")`` falls back to the local backend.
"""
import os

import numpy

# set by MPI launchers (MPICH/Hydra, Open MPI, PMIx) in every rank they start
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
_OPS = ("sum", "max", "min")
CHECK_LAYOUTS = True
_backend = None


def _reduce_gathered(parts, op):
    """The reduction of (world_size, ...) gathered parts over axis 0, in rank order (see the module docstring)."""
    if op == "sum":
        out = parts[0].copy()
        for p in parts[1:]:
            out += p
        return out
    return parts.max(axis=0) if op == "max" else parts.min(axis=0)


class LocalBackend:
    """One process: every collective is the identity."""

    name = "local"
    host = None            # takes arrays where they are
    rank, size = 0, 1

    def barrier(self):
        pass

    def all_gather_objects(self, obj):
        return [obj]

    def all_gather(self, x):
        return x[None].copy()

    def broadcast(self, x, root):
        return x.copy()


class MPIBackend:
    """MPI's COMM_WORLD through mpi4py, on contiguous NumPy buffers."""

    name = "mpi"
    host = True

    def __init__(self):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def barrier(self):
        self.comm.Barrier()

    def all_gather_objects(self, obj):
        return self.comm.allgather(obj)

    def all_gather(self, x):
        out = numpy.empty((self.size, *x.shape), x.dtype)
        self.comm.Allgather(x, out)
        return out

    def broadcast(self, x, root):
        out = x.copy()
        self.comm.Bcast(out, root=root)
        return out


class NCCLBackend:
    """NCCL through CuPy (``cupy.cuda.nccl``) on CuPy buffers, one GPU per rank: rank r uses device
    r % (GPUs on the node). MPI starts the ranks and carries the NCCL id from rank 0 to the others; the
    layout check travels over MPI too. One process without MPI is a world of one (an id needs no carrier)."""

    name = "nccl"
    host = False

    def __init__(self):
        from .. import backend
        if not backend.has_gpu():
            raise RuntimeError("backend='nccl' needs a CUDA GPU through CuPy; none answers here (use 'mpi')")
        cupy = backend.cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        try:
            self.mpi = MPIBackend()
        except ImportError:
            self.mpi = LocalBackend()
        self.rank, self.size = self.mpi.rank, self.mpi.size
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = numpy.array(nccl.get_unique_id() if self.rank == 0 else [0] * 128, numpy.int8)
        uid = self.mpi.broadcast(uid, 0)
        self.comm = nccl.NcclCommunicator(self.size, tuple(uid.tolist()), self.rank)
        self.types = {numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16, numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
                      numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64, numpy.dtype(numpy.int32): nccl.NCCL_INT32,
                      numpy.dtype(numpy.int64): nccl.NCCL_INT64, numpy.dtype(numpy.uint8): nccl.NCCL_UINT8}

    def _type(self, x):
        if x.dtype not in self.types:
            raise TypeError(f"the NCCL backend carries {sorted(str(t) for t in self.types)}, got {x.dtype}")
        return self.types[x.dtype]

    def barrier(self):
        self.cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def all_gather_objects(self, obj):
        return self.mpi.all_gather_objects(obj)

    def all_gather(self, x):
        out = self.cupy.empty((self.size, *x.shape), x.dtype)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.comm.allGather(x.data.ptr, out.data.ptr, x.size, self._type(x), stream)
        return out

    def broadcast(self, x, root):
        out = x.copy()
        self.comm.bcast(out.data.ptr, out.size, self._type(out), root, self.cupy.cuda.get_current_stream().ptr)
        return out


def init(backend="auto"):
    """Choose the backend for this process (once; a second call with another backend is an error).
    "auto": MPI when an MPI launcher started this process and the job has more than one rank, else
    local (a plain ``python`` never initializes MPI)."""
    global _backend
    if backend not in ("auto", "mpi", "local", "nccl"):
        raise ValueError(f"backend must be 'auto', 'mpi', 'nccl' or 'local', got {backend!r}")
    if _backend is not None:
        if backend not in ("auto", _backend.name):
            raise RuntimeError(f"cubn.distributed is already initialized with {_backend.name!r}, not {backend!r}")
        return _backend.name
    if backend == "nccl":
        _backend = NCCLBackend()
    elif backend == "local":
        _backend = LocalBackend()
    elif backend == "mpi":
        try:
            _backend = MPIBackend()
        except ImportError as e:
            raise RuntimeError("backend='mpi' needs mpi4py and an MPI: pip install 'cubn[dist]'") from e
    else:
        candidate = None
        if any(v in os.environ for v in _LAUNCHER_VARS):
            try:
                candidate = MPIBackend()
            except ImportError:
                candidate = None
        _backend = candidate if candidate is not None and candidate.size > 1 else LocalBackend()
    return _backend.name


def _current():
    if _backend is None:
        init("auto")
    return _backend


def rank():
    return _current().rank


def world_size():
    return _current().size


def barrier():
    _current().barrier()


def all_gather_object(obj):
    """Every rank's ``obj`` in rank order, e.g. a random generator's state (mpi4py pickles it in transit:
    use it for small values of your own program, never for data from elsewhere)."""
    return list(_current().all_gather_objects(obj))


def _checked(fn, x):
    """x as a contiguous array where the backend carries it, with the same shape and dtype on every rank
    (else a ValueError on all), and a function that moves a result back to x's device."""
    from .. import backend as arrays
    if not (isinstance(x, numpy.ndarray) or arrays.is_cupy(x)):
        raise TypeError(f"{fn} takes a NumPy or CuPy array, got {type(x).__name__}")
    b = _current()
    home = arrays.device_of(x)
    where = home if b.host is None else ("cpu" if b.host else "cuda")
    x = arrays.get_array_module(x).ascontiguousarray(arrays.to_device(x, where))
    if CHECK_LAYOUTS and b.size > 1:
        layouts = b.all_gather_objects((x.shape, x.dtype.str))
        if any(layout != layouts[0] for layout in layouts):
            raise ValueError(f"{fn}: every rank must pass the same shape and dtype, got (shape, dtype) by rank: {layouts}")
    return x, (lambda out: out if where == home else arrays.to_device(out, home))


def all_reduce(x, op="sum"):
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    x, back = _checked("all_reduce", x)
    return back(_reduce_gathered(_current().all_gather(x), op))


def all_gather(x):
    x, back = _checked("all_gather", x)
    return back(_current().all_gather(x))


def broadcast(x, root=0):
    b = _current()
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < b.size:
        raise ValueError(f"root must be a rank in [0, {b.size}), got {root!r}")
    x, back = _checked("broadcast", x)
    return back(b.broadcast(x, root))
