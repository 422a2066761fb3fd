"""Run under `mpiexec -n N python -m mpi4py tests/mpi/collectives.py`; rank 0 prints "ok <rank> <size>" for every
rank that passed (one process prints, so the lines do not interleave)."""
import numpy

from cubn import distributed as dist

assert dist.init() == "mpi", "several ranks: auto must pick MPI"
r, n = dist.rank(), dist.world_size()
x = numpy.array([[r + 1.0, -r], [2.0 * r, 1.0]])
numpy.testing.assert_array_equal(dist.all_reduce(x), sum(numpy.array([[k + 1.0, -k], [2.0 * k, 1.0]]) for k in range(n)))
assert dist.all_reduce(numpy.array([r]), op="max").tolist() == [n - 1]
assert dist.all_reduce(numpy.array([r]), op="min").tolist() == [0]
gathered = dist.all_gather(numpy.array([r, 10 * r], numpy.int64))
assert gathered.tolist() == [[k, 10 * k] for k in range(n)], gathered
assert dist.broadcast(numpy.array([r + 0.5]), root=n - 1).tolist() == [n - 0.5]
assert x.tolist() == [[r + 1.0, -r], [2.0 * r, 1.0]], "collectives must leave their input alone"
try:
    dist.all_gather(numpy.zeros(r + 1))           # different shapes: an error on every rank, not a hang
except ValueError as e:
    assert "same shape and dtype" in str(e)
else:
    raise AssertionError("mismatched shapes were accepted")
dist.barrier()
lines = dist.all_gather(numpy.array([r, n]))
if r == 0:
    print("\n".join(f"ok {k} {m}" for k, m in lines.tolist()), flush=True)
