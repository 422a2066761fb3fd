"""Run under `mpiexec -n 2 python -m mpi4py tests/mpi/abort.py`: rank 1 raises while rank 0 waits in a collective.
With `-m mpi4py` the uncaught exception calls MPI_Abort, and the whole job ends at once instead of hanging."""
from cubn import distributed as dist

if dist.rank() == 1:
    raise RuntimeError("rank 1 fails on purpose")
dist.barrier()                          # rank 0 would wait here forever without -m mpi4py
print("rank 0 passed a barrier that rank 1 never reached", flush=True)
