import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from cubn import backend, cpu, emulate, jit, set_num_threads

# One BLAS thread, here and in the processes the tests start (mpiexec ranks, the CLI): the suite's
# matrix products are small, and several threads per process on a shared or busy CI machine
# contend for its cores (docs/cpu.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
set_num_threads(1)
cpu.keep_freed_memory()     # large arrays reused without page faults (cubn/cpu.py)

gpu = pytest.mark.gpu
emulated = pytest.mark.skipif(not emulate.available(), reason="no C++ compiler for the kernel emulator")
jitted = pytest.mark.skipif(not jit.available(), reason="Numba is not installed (the cpu extra)")

# One test body, several array paths: tests take the ``device`` fixture and make
# their inputs with ``to_dev``. The GPU case skips cleanly where no GPU answers.
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]
# Test files whose GPU half needs only the normalization kernels set EMULATE_NORM_KERNELS = True:
# their ``device`` then also takes "emulate", NumPy arrays with the norm layers running the CUDA
# kernels on the CPU emulator (CUBN_KERNELS=emulate); conv, pooling and the rest stay NumPy.
# With Numba installed, "cpu" runs the norms' compiled loops (cubn/jit); those files' ``device`` then
# also takes "twin", NumPy arrays with CUBN_KERNELS=ref, so that the layers are tested on both CPU paths.
KERNEL_DEVICES = DEVICES + [pytest.param("emulate", marks=emulated), pytest.param("twin", marks=jitted)]
# Test files of a NumPy twin set JIT_TWIN = "<family>" (or a tuple of families): their ``device`` also takes "jit", for which the
# test module's own names of the family's functions (imported from cubn.ref.<family>) are swapped for
# cubn.jit.<family>'s for the test, so that every twin test also checks the compiled loops.


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
        jit_too = [pytest.param("jit", marks=jitted)] if hasattr(metafunc.module, "JIT_TWIN") else []
        metafunc.parametrize("device", (KERNEL_DEVICES if emulated_too else DEVICES) + jit_too, indirect=True)


@pytest.fixture
def device(request, monkeypatch):
    """'cpu' or 'cuda'; 'cpu' with CUBN_KERNELS=emulate for "emulate", with CUBN_KERNELS=ref for "twin",
    and with the test module's twin functions swapped for the compiled loops' for "jit"."""
    if request.param in ("emulate", "twin"):
        monkeypatch.setenv("CUBN_KERNELS", "emulate" if request.param == "emulate" else "ref")
        return "cpu"
    if request.param == "jit":
        families = request.module.JIT_TWIN
        for family in (families,) if isinstance(families, str) else families:
            twin, loops = (importlib.import_module(f"cubn.{p}.{family}") for p in ("ref", "jit"))
            for name, value in list(vars(request.module).items()):
                if name.startswith(family + "_") and getattr(twin, name, None) is value:
                    monkeypatch.setattr(request.module, name, getattr(loops, name))
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
