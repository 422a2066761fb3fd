import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from cubn import backend, cpu, emulate, set_num_threads

# One BLAS thread, here and in the processes the tests start (mpiexec ranks, the CLI): the suite's
# matrix products are small, and several threads per process on a shared or busy CI machine
# contend for its cores (docs/cpu.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
set_num_threads(1)
cpu.keep_freed_memory()     # large arrays reused without page faults (cubn/cpu.py)

gpu = pytest.mark.gpu
emulated = pytest.mark.skipif(not emulate.available(), reason="no C++ compiler for the kernel emulator")

# One test body, several array paths: tests take the ``device`` fixture and make
# their inputs with ``to_dev``. The GPU case skips cleanly where no GPU answers.
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]
# Test files whose GPU half needs only the normalization kernels set EMULATE_NORM_KERNELS = True:
# their ``device`` then also takes "emulate", NumPy arrays with the norm layers running the CUDA
# kernels on the CPU emulator (CUBN_KERNELS=emulate); conv, pooling and the rest stay NumPy.
KERNEL_DEVICES = DEVICES + [pytest.param("emulate", marks=emulated)]


def pytest_collection_modifyitems(config, items):
    if backend.has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA device answers through CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        emulated_too = getattr(metafunc.module, "EMULATE_NORM_KERNELS", False)
        metafunc.parametrize("device", KERNEL_DEVICES if emulated_too else DEVICES, indirect=True)


@pytest.fixture
def device(request, monkeypatch):
    """'cpu' or 'cuda'; for "emulate", 'cpu' with CUBN_KERNELS=emulate set for the test."""
    if request.param == "emulate":
        monkeypatch.setenv("CUBN_KERNELS", "emulate")
        return "cpu"
    return request.param


def to_dev(a, device):
    """A NumPy array moved to ``device`` ('cpu' keeps it as it is)."""
    return backend.to_device(numpy.asarray(a), device)


ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args, hide=()):
    """``python -m cubn.bench *args`` in a fresh interpreter from the checkout, with the modules named
    in ``hide`` made unimportable (as on a machine without them); the CompletedProcess."""
    code = ("import sys, runpy; " + "".join(f"sys.modules[{name!r}] = None; " for name in hide)
            + f"sys.argv = ['cubn.bench', *{list(args)!r}]; "
            "runpy.run_module('cubn.bench', run_name='__main__', alter_sys=True)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


def torch_importable():
    try:
        import torch  # noqa: F401
        return True
    except Exception:
        return False
