"""cubn.distributed: the local backend in this process, the MPI backend under mpiexec.

Multi-process cases start ``mpiexec -n N python -m mpi4py`` with a timeout; they skip cleanly
where mpiexec or mpi4py is missing or MPI cannot start (a preflight job tells which), and fail
when MPI starts but a collective is wrong.
"""
import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from cubn import backend

SCRIPTS = Path(__file__).resolve().parent / "mpi"
TIMEOUT = 120


@functools.cache
def mpiexec():
    """The mpiexec next to this Python (the mpich wheel's, matching mpi4py), else the one on PATH; checked once."""
    exe = Path(sys.executable).with_name("mpiexec")
    exe = str(exe) if exe.exists() else shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec (pip install 'cubn[dist]')")
    try:
        pre = subprocess.run([exe, "-n", "2", sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip("MPI could not start two processes here within the timeout")
    if pre.returncode != 0:
        pytest.skip(f"MPI cannot start here: {pre.stderr.strip()[-300:]}")
    return exe


def run_ranks(n, script, *args, check=True, timeout=TIMEOUT):
    done = subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(SCRIPTS / script), *args],
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{script} on {n} ranks failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout if check else done


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_over_mpi(n):
    out = run_ranks(n, "collectives.py")
    assert sorted(line for line in out.splitlines() if line.startswith("ok")) == [f"ok {r} {n}" for r in range(n)]


def test_local_backend_in_one_process(monkeypatch):
    from cubn import distributed as dist
    monkeypatch.setattr(dist, "_backend", None)
    assert dist.init("local") == "local" and dist.rank() == 0 and dist.world_size() == 1
    x = numpy.arange(6.0).reshape(2, 3)
    assert (dist.all_reduce(x) == x).all() and dist.all_reduce(x) is not x
    assert dist.all_gather(x).shape == (1, 2, 3) and (dist.broadcast(x) == x).all()
    dist.barrier()
    with pytest.raises(ValueError, match="op must be"):
        dist.all_reduce(x, op="prod")
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        dist.all_reduce([1.0])
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast(x, root=1)
    with pytest.raises(RuntimeError, match="already initialized"):
        dist.init("mpi")
    monkeypatch.setattr(dist, "_backend", None)
    if not backend.has_gpu():
        with pytest.raises(RuntimeError, match="backend='nccl' needs a CUDA GPU"):
            dist.init("nccl")
    with pytest.raises(ValueError, match="backend must be"):
        dist.init("gloo")


@pytest.mark.parametrize("split", ["4,4", "5,2,0", "1,0,6,1"])
def test_sync_batchnorm_over_ranks_equals_one_batchnorm(split):
    """Slices of the batch per rank, some empty, at a 1e4 offset, two steps: outputs, dx, the summed
    dgamma/dbeta and the running statistics match one BatchNorm2d on the whole batch to 1e-10 (float64),
    bitwise equal on every rank; float32 as accurate as one process; eval and frozen statistics silent."""
    assert f"ok: slices [{split.replace(',', ', ')}]" in run_ranks(split.count(",") + 1, "syncbn.py", split)


def test_ddp_over_two_ranks_equals_one_process(tmp_path):
    out = run_ranks(2, "ddp.py", str(tmp_path))
    for part in ("ddp (4, 4) grad_reduction=mean", "ddp (4, 4) grad_reduction=sum", "ddp (5, 3) grad_reduction=sum",
                 "ddp (8, 0) grad_reduction=sum", "eval: no collective call", "no_sync", "sampler", "fit: a resumed"):
        assert f"ok {part}" in out, f"{part!r} missing from:\n{out}"


def test_a_failing_rank_aborts_the_job_within_seconds():
    start = time.perf_counter()
    done = run_ranks(2, "abort.py", check=False, timeout=60)
    assert done.returncode != 0 and "rank 1 fails on purpose" in done.stderr, done.stderr
    assert "passed a barrier" not in done.stdout
    assert time.perf_counter() - start < 30


def test_cli_trains_the_main_job_on_two_processes(tmp_path):
    exe = mpiexec()
    done = subprocess.run([exe, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "cubn", "train", "--epochs", "2",
                           "--no-progress", "--out", str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 processes (SyncBatchNorm, DistributedDataParallel)" in lines[0]
    assert sum(line.startswith("epoch") for line in lines) == 2, "rank 0 alone reports each epoch"
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rows) == 2 and rows[-1]["val_accuracy"] > 0.9
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.csv", "metrics.json", "checkpoint.npz", "model.npz"}


def test_dist_benchmark_writes_its_reports_on_two_processes(tmp_path):
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "cubn.bench", "dist", "--reps",
                           "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "dist-cpu-2ranks.json").read_text())
    assert report["meta"]["ranks"] == 2 and report["step"]["per_rank"] == 32
    assert [r["shape"][1] for r in report["layers"]] == [16, 32, 64]
    assert all(0 < r["sync"]["min_ms"] <= r["sync"]["median_ms"] <= r["sync"]["max_ms"] for r in report["layers"])
    assert "| overhead ms |" in (tmp_path / "dist-cpu-2ranks.md").read_text()


def test_sync_batchnorm_in_one_process_is_batchnorm():
    import cubn
    import cubn.nn as nn
    from gradcheck import check_autodiff
    rng = numpy.random.default_rng(0)
    x, dy = rng.standard_normal((5, 3, 4)) * 2 + 3, rng.standard_normal((5, 3, 4))
    sync, bn = nn.SyncBatchNorm(3).double(), nn.BatchNorm1d(3).double()
    xs, xb = cubn.tensor(x.copy(), requires_grad=True), cubn.tensor(x.copy(), requires_grad=True)
    ys, yb = sync(xs), bn(xb)
    ys.backward(dy)
    yb.backward(dy)
    numpy.testing.assert_allclose(ys.numpy(), yb.numpy(), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(xs.grad, xb.grad, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(sync.weight.grad, bn.weight.grad, rtol=1e-10)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        numpy.testing.assert_allclose(sync.state_dict()[key], bn.state_dict()[key], rtol=1e-12)
    check_autodiff(lambda t, g, b: _sync_with(g, b)(t), x, numpy.array([1.5, 0.5, 2.0]), numpy.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.SyncBatchNorm(3)(cubn.tensor(numpy.ones((1, 3), numpy.float32)))
    mask = numpy.array([[True] * 3 + [False], [True, True, False, False], [False] * 4, [True] * 4, [True] * 4])
    x[~mask[:, None, :].repeat(3, 1)] = numpy.nan                 # padding holding NaN must not leak
    ys = nn.SyncBatchNorm(3).double()(cubn.tensor(x), mask=mask)
    yb = nn.BatchNorm1d(3).double()(cubn.tensor(x), mask=mask)
    numpy.testing.assert_allclose(ys.numpy(), yb.numpy(), rtol=1e-12, atol=1e-12)
    assert (ys.numpy()[~mask[:, None, :].repeat(3, 1)] == 0).all()


def _sync_with(gamma, beta):
    """A SyncBatchNorm whose weight and bias are the given tensors (for the finite-difference check)."""
    import cubn.nn as nn
    layer = nn.SyncBatchNorm(3, track_running_stats=False).double()
    layer._parameters["weight"], layer._parameters["bias"] = gamma, beta
    return layer


def test_convert_sync_batchnorm():
    import cubn.nn as nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16)),
                          nn.ReLU(), nn.GhostBatchNorm2d(4, 2))
    weight = model[1].weight
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][1], nn.SyncBatchNorm)
    assert model[1].weight is weight and not isinstance(model[4], nn.SyncBatchNorm)   # parameters kept; Ghost not
    assert [k for k in model.state_dict() if k.startswith("1.")] == [
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked", "1.num_batches_skipped"]


def test_convert_refuses_batch_renorm_by_name():
    import cubn.nn as nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchRenorm2d(4)))
    with pytest.raises(ValueError, match=r"1\.0 is a BatchRenorm2d, and Batch Renorm has no synchronized form"):
        nn.SyncBatchNorm.convert_sync_batchnorm(model)


def test_ddp_in_one_process_is_the_module():
    import cubn
    import cubn.nn as nn
    import cubn.nn.functional as F
    model = nn.Sequential(nn.Linear(3, 2))
    ddp = nn.parallel.DistributedDataParallel(model)
    x = cubn.tensor(numpy.ones((4, 3), numpy.float32))
    F.cross_entropy(ddp(x), cubn.tensor(numpy.array([0, 1, 0, 1]))).backward()
    grad = model[0].weight.grad.copy()
    model.zero_grad()
    F.cross_entropy(model(x), cubn.tensor(numpy.array([0, 1, 0, 1]))).backward()
    assert (model[0].weight.grad == grad).all()
    assert list(ddp.state_dict()) == ["module.0.weight", "module.0.bias"]
    with pytest.raises(ValueError, match="grad_reduction must be one of 'mean', 'sum'"):
        nn.parallel.DistributedDataParallel(model, grad_reduction="avg")
    with pytest.raises(ValueError, match="bucket_cap_mb must be a number > 0"):
        nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0)
    with pytest.raises(TypeError, match="module must be a cubn.nn.Module"):
        nn.parallel.DistributedDataParallel(lambda x: x)


def test_sampler_arguments_and_loader():
    from cubn.data import DataLoader, DistributedSampler
    s = DistributedSampler(list(range(7)), num_replicas=3, rank=2, shuffle=False, pad=False)
    assert s.indices().tolist() == [2, 5] and len(s) == 2 and s.num_samples == 3
    assert DistributedSampler(7, num_replicas=3, rank=2, shuffle=False).indices().tolist() == [2, 5, 1]  # padded
    assert DistributedSampler(7, num_replicas=3, rank=2, shuffle=False, drop_last=True).indices().tolist() == [2, 5]
    loader = DataLoader(numpy.arange(7.0)[:, None], numpy.arange(7), 2, sampler=s)
    assert len(loader) == 2 and [b[1].numpy().tolist() for b in loader] == [[2, 5], []]   # same count on every rank
    s.set_epoch(4)
    assert loader.state_dict()["sampler"] == {"seed": 0, "epoch": 4}
    for kwargs, match in ((dict(rank=3), "rank must be in"), (dict(num_replicas=0), "num_replicas must be"),
                          (dict(drop_last=True, pad=False), "contradict"), (dict(seed=-1), "seed must be")):
        with pytest.raises(ValueError, match=match):
            DistributedSampler(7, **{"num_replicas": 3, "rank": 0, **kwargs})
    with pytest.raises(ValueError, match="exclusive with shuffle=True"):
        DataLoader(numpy.zeros((7, 1)), numpy.zeros(7), 2, shuffle=True, sampler=s)


@pytest.mark.skipif(not __import__("cubn.emulate").emulate.available(), reason="no C++ compiler for the emulator")
@pytest.mark.parametrize("masked", [False, True])
def test_sync_batchnorm_runs_the_kernel_phases(monkeypatch, masked):
    """The phases SyncBatchNorm runs, through the CUDA launchers and kernels on the emulator, match the twins."""
    import cubn
    import cubn.nn as nn
    rng = numpy.random.default_rng(3)
    x, dy = rng.standard_normal((6, 3, 10)).astype(numpy.float32) + 5, rng.standard_normal((6, 3, 10))
    mask = rng.random((6, 10)) < 0.7 if masked else None
    results = []
    for mode in ("ref", "emulate"):
        monkeypatch.setenv("CUBN_KERNELS", mode)
        layer = nn.SyncBatchNorm(3)
        t = cubn.tensor(x.copy(), requires_grad=True)
        y = layer(t, mask=mask)
        y.backward(dy.astype(numpy.float32))
        results.append([y.numpy(), t.grad, layer.weight.grad, layer.running_var.numpy()])
    for got, want in zip(*results[::-1]):
        numpy.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
