"""cubn.distributed: the local backend in this process, the MPI backend under mpiexec.

Multi-process cases start ``mpiexec -n N python -m mpi4py`` with a timeout; they skip cleanly
where mpiexec or mpi4py is missing or MPI cannot start (a preflight job tells which), and fail
when MPI starts but a collective is wrong.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

SCRIPTS = Path(__file__).resolve().parent / "mpi"
TIMEOUT = 120


def mpiexec():
    exe = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
    if not Path(exe).exists():
        pytest.skip("no mpiexec (pip install 'cubn[dist]')")
    try:
        pre = subprocess.run([exe, "-n", "2", sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.skip("MPI could not start two processes here within the timeout")
    if pre.returncode != 0:
        pytest.skip(f"MPI cannot start here: {pre.stderr.strip()[-300:]}")
    return exe


def run_ranks(n, script):
    done = subprocess.run([mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(SCRIPTS / script)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{script} on {n} ranks failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


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
    with pytest.raises(TypeError, match="NumPy array"):
        dist.all_reduce([1.0])
    with pytest.raises(ValueError, match="root must be a rank"):
        dist.broadcast(x, root=1)
    with pytest.raises(RuntimeError, match="already initialized"):
        dist.init("mpi")
    monkeypatch.setattr(dist, "_backend", None)
    with pytest.raises(NotImplementedError, match="NCCL backend"):
        dist.init("nccl")
    with pytest.raises(ValueError, match="backend must be"):
        dist.init("gloo")
