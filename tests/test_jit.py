"""The compiled CPU loops (cubn/jit) at the kernel API, and the dispatch that picks them.

The twins' own tests run on the loops too (``JIT_TWIN`` in tests/test_ref_*.py, device "jit"),
and so do the non-finite tests of tests/test_kernels_gpu.py. Here every public function of
``cubn.jit.{batchnorm,batchrenorm,rownorm,rmsnorm}``
meets the float64 references of the CUDA suite on its full-size GPU shapes (C = 1, S = 1,
70,000 channels or rows, reductions over 2^21 values), float16 to float64, with and without
affine; the loops keep the contract's names, signatures, dtypes and shapes, leave their
inputs alone, and hand what they do not compile (float16, BatchNorm with S = 1) to the twin.
"""
import importlib
import inspect

import numpy as np
import pytest

import cubn.jit
import test_kernels_gpu as suite
from cubn.ops.norm import kernel_module
from test_kernels_cpu import CONTRACT, public_functions

pytestmark = pytest.mark.skipif(not cubn.jit.available(), reason="Numba is not installed (the cpu extra)")
FAMILIES = suite.MODULES   # every family has its compiled loops

CASES = [
    pytest.param(fn, dtype, shape, affine, id=suite.case_id("jit", fn, None, dtype, shape, affine))
    for shapes in suite.SHAPE_LISTS["cuda"] for shape in shapes for dtype in suite.DTYPES
    for affine in ((True, False) if shape == shapes[3] else (True,))
    for module in FAMILIES if suite.SHAPES["cuda"][module] is shapes for fn in suite.FUNCTIONS[module]]


@pytest.mark.parametrize("fn, dtype, shape, affine", CASES)
def test_loops_match_ref64(fn, dtype, shape, affine):
    suite.check_against_ref64("jit", fn, None, dtype, shape, affine)


@pytest.mark.parametrize("family", FAMILIES)
def test_loops_define_the_contract_with_the_twins_signatures(family):
    loops, twin = (importlib.import_module(f"cubn.{p}.{family}") for p in ("jit", "ref"))
    assert public_functions(loops) == set(CONTRACT[family]), sorted(public_functions(loops))
    for fn in CONTRACT[family]:
        assert inspect.signature(getattr(loops, fn)) == inspect.signature(getattr(twin, fn)), fn


@pytest.mark.parametrize("family", suite.MODULES)
def test_numpy_input_dispatches_to_the_loops(monkeypatch, family):
    x = np.zeros((2, 3, 4), np.float32)
    assert kernel_module(family, x) is importlib.import_module("cubn.jit." + family)
    monkeypatch.setenv("CUBN_KERNELS", "ref")
    assert kernel_module(family, x) is importlib.import_module("cubn.ref." + family)
    monkeypatch.setenv("CUBN_KERNELS", "emulate")
    assert kernel_module(family, x) is importlib.import_module("cubn.cuda." + family)


@pytest.mark.parametrize("fn, shape, dtype", [
    ("batchnorm_forward", (6, 4, 7), np.float16),     # float16: not compiled
    ("batchnorm_forward", (64, 5, 1), np.float32),    # S = 1: the twin's sums over the batch are faster
    ("batchnorm_backward", (64, 5, 1), np.float64),
    ("rownorm_forward", (3, 6, 10, 3), np.float16),
    ("rownorm_backward", (3, 6, 10, 3), np.float16),
    ("rmsnorm_forward", (3, 10), np.float16),
])
def test_what_is_not_compiled_is_the_twins_result_exactly(fn, shape, dtype):
    family = fn.split("_")[0]
    args, _ = suite.problem(fn, shape, dtype, True)
    got, want = (getattr(importlib.import_module(f"cubn.{p}.{family}"), fn)(*args) for p in ("jit", "ref"))
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w, equal_nan=True), fn


def test_layers_take_the_loops(monkeypatch):
    """nn layers on NumPy arrays reach cubn.jit, and give the twins' results (CUBN_KERNELS=ref) within float32 rounding."""
    import cubn
    import cubn.nn as nn
    from tolerance import assert_close

    calls = []
    for family in FAMILIES:
        loops = importlib.import_module("cubn.jit." + family)
        for fn in CONTRACT[family]:
            monkeypatch.setattr(loops, fn, suite.recording(getattr(loops, fn), calls))
    rng = np.random.default_rng(0)
    x = (1.5 + rng.standard_normal((4, 6, 5, 5))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = {}
    for mode in ("jit", "ref"):
        if mode == "ref":
            monkeypatch.setenv("CUBN_KERNELS", "ref")
        else:
            monkeypatch.delenv("CUBN_KERNELS", raising=False)     # the default path: the loops
        cubn.manual_seed(0)
        layers = [nn.BatchNorm2d(6), nn.GroupNorm(3, 6), nn.LayerNorm((5, 5)), nn.InstanceNorm2d(6, affine=True),
                  nn.BatchRenorm2d(6), nn.RMSNorm((5, 5))]
        out = []
        for layer in layers:
            xt = cubn.tensor(x, requires_grad=True)
            layer(xt).backward(dy)
            out += [xt.grad] + [p.grad for p in layer.parameters()]
        results[mode] = out
    entry_points = [c for c in calls if c.endswith(("_forward", "_backward"))]   # not the phases they call
    assert entry_points == (["batchnorm_forward", "batchnorm_backward"] + ["rownorm_forward", "rownorm_backward"] * 3
                            + ["batchrenorm_forward", "batchrenorm_backward", "batchnorm_backward",  # the one it runs on
                               "rmsnorm_forward", "rmsnorm_backward"])
    for got, want in zip(results["jit"], results["ref"]):
        assert_close(got, want, np.float32, "jit vs twin")


def test_loops_compile_without_a_writable_cache_folder(monkeypatch):
    """Numba refuses cache=True when no folder is writable for its cache; the loops then compile uncached."""
    import numba.core.caching

    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])

    def twice(a, out):
        for i in range(a.shape[0]):
            out[i] = 2 * a[i]

    compiled = cubn.jit.loop(twice)
    out = np.empty(3)
    compiled(np.arange(3.0), out)
    assert out.tolist() == [0.0, 2.0, 4.0] and compiled._cache.__class__.__name__ == "NullCache"


def test_a_numba_that_does_not_import_means_the_twins_and_a_warning(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "numba":
            raise ImportError("Numba needs NumPy 1.x (a made-up mismatch)")
        return real_import(name, *args, **kwargs)

    cubn.jit.available.cache_clear()
    monkeypatch.setattr(builtins, "__import__", broken)
    try:
        with pytest.warns(RuntimeWarning, match="Numba is installed but does not import .*made-up mismatch"):
            assert not cubn.jit.available()
        assert kernel_module("rownorm", np.zeros((2, 3, 4), np.float32)) is importlib.import_module("cubn.ref.rownorm")
    finally:
        cubn.jit.available.cache_clear()


def test_cpu_norm_path_names_what_kernel_module_picks(monkeypatch):
    """``cubn info`` and ``bench cpu`` report the path through this one function."""
    from cubn.ops.norm import cpu_norm_path

    assert cpu_norm_path() == "loops"
    for mode, path in (("ref", "twins"), ("emulate", "emulate")):
        monkeypatch.setenv("CUBN_KERNELS", mode)
        assert cpu_norm_path() == path
    monkeypatch.delenv("CUBN_KERNELS")
    monkeypatch.setattr(cubn.jit, "available", lambda: False)
    assert cpu_norm_path() == "twins"
