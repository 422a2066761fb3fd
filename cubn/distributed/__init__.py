"""Data-parallel communication for cubn: one small interface over MPI and a local one-process backend.

    init(backend="auto" | "mpi" | "local")   -> the backend in use ("nccl" is not written yet)
    rank(), world_size(), barrier()
    all_reduce(x, op="sum" | "max" | "min")  -> the elementwise reduction over every rank's x
    all_gather(x)                            -> (world_size, *x.shape): every rank's x, in rank order
    broadcast(x, root=0)                     -> root's x on every rank

Arrays are NumPy arrays (MPI carries host buffers); every call returns a new array and leaves x
alone. Collectives check that all ranks pass the same shape and dtype, and fail on every rank at
once with the same message when they do not (a mismatched MPI buffer would hang or corrupt).

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
_backend = None


class LocalBackend:
    """One process: every collective is the identity."""

    name = "local"
    rank, size = 0, 1

    def barrier(self):
        pass

    def all_gather_objects(self, obj):
        return [obj]

    def all_reduce(self, x, op):
        return x.copy()

    def all_gather(self, x):
        return x[None].copy()

    def broadcast(self, x, root):
        return x.copy()


class MPIBackend:
    """MPI's COMM_WORLD through mpi4py, on contiguous NumPy buffers."""

    name = "mpi"

    def __init__(self):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def barrier(self):
        self.comm.Barrier()

    def all_gather_objects(self, obj):
        return self.comm.allgather(obj)

    def all_reduce(self, x, op):
        out = numpy.empty_like(x)
        self.comm.Allreduce(x, out, op={"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}[op])
        return out

    def all_gather(self, x):
        out = numpy.empty((self.size, *x.shape), x.dtype)
        self.comm.Allgather(x, out)
        return out

    def broadcast(self, x, root):
        out = x.copy()
        self.comm.Bcast(out, root=root)
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
        raise NotImplementedError("the NCCL backend (CuPy arrays on the GPU) is not written yet; use 'mpi'")
    if backend == "local":
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


def _checked(fn, x):
    """x as a contiguous NumPy array, with the same shape and dtype on every rank (else a ValueError on all)."""
    if not isinstance(x, numpy.ndarray):
        raise TypeError(f"{fn} takes a NumPy array (the MPI backend carries host memory), got {type(x).__name__}")
    x = numpy.ascontiguousarray(x)
    layouts = _current().all_gather_objects((x.shape, x.dtype.str))
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(f"{fn}: every rank must pass the same shape and dtype, got (shape, dtype) by rank: {layouts}")
    return x


def all_reduce(x, op="sum"):
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    return _current().all_reduce(_checked("all_reduce", x), op)


def all_gather(x):
    return _current().all_gather(_checked("all_gather", x))


def broadcast(x, root=0):
    backend = _current()
    if not isinstance(root, int) or not 0 <= root < backend.size:
        raise ValueError(f"root must be a rank in [0, {backend.size}), got {root!r}")
    return backend.broadcast(_checked("broadcast", x), root)
