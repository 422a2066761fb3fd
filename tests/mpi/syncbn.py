"""Run under `mpiexec -n 3 python -m mpi4py tests/mpi/syncbn.py`: SyncBatchNorm over uneven and empty slices
equals one BatchNorm on the whole batch (float64, to 1e-10), running statistics bitwise equal on every rank;
rank 0 prints "ok" and what it compared."""
import numpy
from mpi4py import MPI

import cubn
import cubn.nn as nn
from cubn import distributed as dist

comm = MPI.COMM_WORLD
r, size = dist.rank(), dist.world_size()
assert size == 3
splits = [(0, 4), (4, 4), (4, 7)]                    # 4, 0 (empty) and 3 samples
lo, hi = splits[r]


def weights(layer):
    layer.weight.data[...] = [1.5, 0.5, -2.0]
    layer.bias.data[...] = [0.1, -0.2, 0.3]
    return layer


sync = weights(nn.SyncBatchNorm(3, momentum=0.3).double())
ref = weights(nn.BatchNorm2d(3, momentum=0.3).double()) if r == 0 else None
rng = numpy.random.default_rng(0)
for step in range(2):
    X = 1e4 + rng.standard_normal((7, 3, 2, 2))          # a large offset: a sum/sum-of-squares merge would fail
    DY = rng.standard_normal(X.shape)
    x = cubn.tensor(X[lo:hi].copy(), requires_grad=True)
    y = sync(x)
    y.backward(DY[lo:hi])
    ys, dxs = comm.gather(y.numpy(), root=0), comm.gather(x.grad, root=0)
    dgamma = dist.all_reduce(sync.weight.grad)          # the data-parallel sum of the local parameter grads
    dbeta = dist.all_reduce(sync.bias.grad)
    sync.weight.grad = sync.bias.grad = None
    states = comm.allgather({k: v.tobytes() for k, v in sync.state_dict().items()})
    assert all(s == states[0] for s in states), "running statistics differ between ranks"
    if r == 0:
        xr = cubn.tensor(X, requires_grad=True)
        yr = ref(xr)
        yr.backward(DY)
        numpy.testing.assert_allclose(numpy.concatenate(ys), yr.numpy(), rtol=1e-10, atol=1e-10)
        numpy.testing.assert_allclose(numpy.concatenate(dxs), xr.grad, rtol=1e-10, atol=1e-10)
        numpy.testing.assert_allclose(dgamma, ref.weight.grad, rtol=1e-10, atol=1e-10)
        numpy.testing.assert_allclose(dbeta, ref.bias.grad, rtol=1e-10, atol=1e-10)
        for key in ("running_mean", "running_var"):
            numpy.testing.assert_allclose(sync.state_dict()[key], ref.state_dict()[key], rtol=1e-10, atol=1e-10)
        assert int(sync.num_batches_tracked.numpy()) == int(ref.num_batches_tracked.numpy()) == step + 1
        ref.weight.grad = ref.bias.grad = None

# every rank empty: output of the same shape, running statistics unchanged
before = {k: v.copy() for k, v in sync.state_dict().items()}
assert sync(cubn.tensor(numpy.zeros((0, 3, 2, 2)))).shape == (0, 3, 2, 2)
assert all((sync.state_dict()[k] == before[k]).all() for k in before)
# eval: the running statistics, no communication needed (rank 1's empty slice included)
sync.eval()
out = sync(cubn.tensor(numpy.ones((hi - lo, 3, 2, 2))))
assert out.shape == (hi - lo, 3, 2, 2)
if r == 0:
    print("ok: outputs, dx, summed dgamma/dbeta and running statistics equal one BatchNorm2d on the whole batch")
