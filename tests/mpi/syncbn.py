"""Run under `mpiexec -n R python -m mpi4py tests/mpi/syncbn.py 5,2,0` (one batch size per rank): SyncBatchNorm
over those slices equals one BatchNorm2d on the whole batch (float64, to 1e-10: outputs, dx, the summed
dgamma/dbeta, running statistics), the running statistics are bitwise equal on every rank, float32 at a 1e4
offset is as accurate as one process, mask= counts the valid values of every rank, the nonfinite, degenerate,
decay, estimator and cumulative policies decide alike on every rank, every rank empty changes nothing, eval and
frozen statistics make no collective call; rank 0 prints "ok" and what it compared."""
import sys

import numpy
from mpi4py import MPI

import cubn
import cubn.nn as nn
from cubn import distributed as dist

comm = MPI.COMM_WORLD
sizes = [int(s) for s in sys.argv[1].split(",")]
r, size = dist.rank(), dist.world_size()
assert size == len(sizes), f"{len(sizes)} slices for {size} ranks"
lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
total = sum(sizes)


def weights(layer):
    layer.weight.data[...] = [1.5, 0.5, -2.0]
    layer.bias.data[...] = [0.1, -0.2, 0.3]
    return layer


def calls_of(fn):
    """Run fn() and count the collectives it makes on this rank."""
    seen = []
    backend = dist._current()
    saved = {name: getattr(backend, name) for name in ("all_gather", "broadcast", "all_gather_objects", "barrier")}
    for name, method in saved.items():
        setattr(backend, name, lambda *a, _m=method, _n=name, **k: (seen.append(_n), _m(*a, **k))[1])
    try:
        fn()
    finally:
        for name, method in saved.items():
            setattr(backend, name, method)
    return seen


sync = weights(nn.SyncBatchNorm(3, momentum=0.3).double())
ref = weights(nn.BatchNorm2d(3, momentum=0.3).double()) if r == 0 else None
rng = numpy.random.default_rng(0)
for step in range(2):
    X = 1e4 + rng.standard_normal((total, 3, 2, 2))      # a large offset: a sum/sum-of-squares merge would fail
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

# float32 at a 1e4 offset: as close to a float64 BatchNorm as one float32 process is (the output error of ~1e-3
# is float32's own at 1e4: the stored mean's rounding; a sum/sum-of-squares merge would get the variance wrong)
X = (1e4 + rng.standard_normal((total, 3, 2, 2))).astype(numpy.float32)
y32 = weights(nn.SyncBatchNorm(3))(cubn.tensor(X[lo:hi].copy())).numpy()
y32 = comm.gather(y32, root=0)
if r == 0:
    want = weights(nn.BatchNorm2d(3).double())(cubn.tensor(X.astype(numpy.float64))).numpy()
    single = numpy.abs(weights(nn.BatchNorm2d(3))(cubn.tensor(X)).numpy() - want).max()
    synced = numpy.abs(numpy.concatenate(y32) - want).max()
    assert synced <= 2 * single, f"float32 SyncBatchNorm is {synced:.2e} off, one process {single:.2e}"

# mask=: the count is the valid values over every rank; padding (NaN here) never enters
X = rng.standard_normal((total, 3, 5))
M = rng.random((total, 5)) < 0.6
X[~M[:, None, :].repeat(3, 1)] = numpy.nan
DY = rng.standard_normal(X.shape)
layer = weights(nn.SyncBatchNorm(3).double())
x = cubn.tensor(X[lo:hi].copy(), requires_grad=True)
y = layer(x, mask=M[lo:hi])
y.backward(DY[lo:hi])
ys, dxs = comm.gather(y.numpy(), root=0), comm.gather(x.grad, root=0)
running = layer.running_var.numpy().copy()
if r == 0:
    ref = weights(nn.BatchNorm1d(3).double())
    xr = cubn.tensor(X, requires_grad=True)
    yr = ref(xr, mask=M)
    yr.backward(DY)
    numpy.testing.assert_allclose(numpy.concatenate(ys), yr.numpy(), rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(numpy.concatenate(dxs), xr.grad, rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(running, ref.running_var.numpy(), rtol=1e-10, atol=1e-10)

# policies decide on the merged statistics, the same way on every rank
poisoned = X[lo:hi].copy()
last = max(i for i, n in enumerate(sizes) if n)
poisoned[..., 0] = numpy.inf if r == last else poisoned[..., 0]      # only the last non-empty rank sees an inf
for policy in ("skip", "raise"):
    layer = nn.SyncBatchNorm(3, nonfinite=policy).double()
    try:
        layer(cubn.tensor(numpy.nan_to_num(poisoned, nan=0.0)))
        outcome = "ran"
    except FloatingPointError:
        outcome = "raised"
    outcomes = dist.all_gather_object((outcome, layer.running_mean.numpy().tolist()))
    assert all(o == outcomes[0] for o in outcomes), f"nonfinite={policy!r} decided differently: {outcomes}"
    assert outcomes[0][0] == ("ran" if policy == "skip" else "raised"), outcomes
    assert outcomes[0][1] == [0.0, 0.0, 0.0], "a non-finite batch was folded in"
one = numpy.ones((1 if r == 0 else 0, 3))                   # one value per channel over all ranks
try:
    nn.SyncBatchNorm(3).double()(cubn.tensor(one))
    degenerate = "ran"
except ValueError as e:
    degenerate = "raised" if "over all ranks" in str(e) else str(e)
assert dist.all_gather_object(degenerate) == ["raised"] * size
for kwargs in (dict(decay=0.9), dict(running_var_estimator="biased"), dict(momentum=None)):
    layer = nn.SyncBatchNorm(3, **kwargs).double()
    for step in range(2):
        layer(cubn.tensor(X[lo:hi, :, :2] * 0 + rng.standard_normal((hi - lo, 3, 2))))
    states = dist.all_gather_object(layer.running_var.numpy().tobytes())
    assert all(st == states[0] for st in states), f"{kwargs}: running statistics differ between ranks"

# every rank empty: output of the same shape, running statistics unchanged
before = {k: v.copy() for k, v in sync.state_dict().items()}
assert sync(cubn.tensor(numpy.zeros((0, 3, 2, 2)))).shape == (0, 3, 2, 2)
assert all((sync.state_dict()[k] == before[k]).all() for k in before)
# eval and frozen statistics: the running statistics, and no collective call at all
sync.eval()
out = []
assert calls_of(lambda: out.append(sync(cubn.tensor(numpy.ones((hi - lo, 3, 2, 2)))))) == [], "eval communicated"
assert out[0].shape == (hi - lo, 3, 2, 2)
sync.train()
sync.freeze_stats()
assert calls_of(lambda: sync(cubn.tensor(numpy.ones((hi - lo, 3, 2, 2))))) == [], "frozen statistics communicated"
sync.unfreeze_stats()
assert calls_of(lambda: sync(cubn.tensor(numpy.ones((hi - lo, 3, 2, 2))))) == ["all_gather_objects", "all_gather"]
if r == 0:
    print(f"ok: slices {sizes}: outputs, dx, summed dgamma/dbeta and running statistics equal one BatchNorm2d; "
          "masked, policies, empty and eval checked")
