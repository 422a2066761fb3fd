"""Every version of every CUDA kernel against float64 references, on awkward shapes (GPU only).

For each public function of ``cubn.cuda.{batchnorm,batchrenorm,rownorm,rmsnorm}``,
each entry of its ``VERSIONS`` and float16/32/64 input:

* the results match a float64 reference -- ``ref64_batch``/``ref64_rows`` for
  forward, the ``cubn.ref`` twin run in float64 for backward (with a random
  dy) -- under ``tests/tolerance.py``, widened by sqrt(n/1024) for reductions
  over n > 1024 values; every result has the contract's dtype and shape, lives
  on the GPU, and the inputs are left untouched;
* two runs give bitwise-identical results (on the largest shapes, where
  reductions span several blocks);
* ``cubn.ref`` on NumPy and ``cubn.cuda`` on CuPy agree within float32 tolerance;
* CuPy input reaches ``cubn.cuda`` through ``kernel_module`` and the nn layers.

Shapes cover C=1, S=1 (the (N, C) case), reductions shorter than a block and
not a multiple of one, more than 65,535 channels or rows, odd group counts and
reductions over millions of values.

CUBN_SANITIZER=1 (``scripts/gpu_check.sh`` sets it under compute-sanitizer)
shrinks the large shapes and gives every array its own cudaMalloc, so memcheck
sees an out-of-bounds access that CuPy's memory pool would hide inside a
larger block.
"""
import functools
import importlib
import math
import os

import numpy as np
import pytest

import cubn
import cubn.nn as nn
from cubn import backend
from cubn.ops.norm import kernel_module
from cubn.ref import batchnorm as ref_bn
from cubn.ref import batchrenorm as ref_brn
from cubn.ref import rmsnorm as ref_rms
from cubn.ref import rownorm as ref_rows
from cubn.ref.common import acc_dtype
from ref64_batch import bn_eval_ref, bn_train_ref, brn_train_ref, random_batch
from ref64_rows import gn_ref, moments, rms_ref
from tolerance import assert_close

pytestmark = pytest.mark.gpu

SANITIZER = os.environ.get("CUBN_SANITIZER") == "1"
EPS = 1e-5
RMAX, DMAX = 1.5, 0.5  # tight enough that r and d clip for some channels
DTYPES = [np.float16, np.float32, np.float64]
MODULES = ("batchnorm", "batchrenorm", "rownorm", "rmsnorm")

# (N, C, S): one statistic per channel over M = N*S values
BATCH_SHAPES = [
    (4, 1, 37),                 # C = 1
    (64, 5, 1),                 # S = 1: the (N, C) case
    (2, 3, 5),                  # M = 10, shorter than a block
    (3, 7, 143),                # M = 429, not a multiple of a block
    (5, 3, 1031),               # M = 5155, several blocks' worth
    (4, 70000, 1),              # more channels than a grid's y or z may hold (65,535)
    (2, 3, 4099) if SANITIZER else (2, 3, 2 ** 20),  # M = 2^21 (sanitizer: 8198, several v2 chunks)
]
# (N, C, S, groups): rows (n, g) of K = (C/groups)*S values
ROW_SHAPES = [
    (3, 1, 50, 1),              # C = 1
    (6, 8, 1, 4),               # S = 1, K = 2
    (5, 33, 1, 1),              # LayerNorm's (R, K, 1) view
    (3, 6, 143, 3),             # K = 286, not a multiple of a block
    (2, 3, 5, 3),               # InstanceNorm, K = 5, shorter than a block
    (2, 15, 7, 5),              # 5 groups, K = 21
    (2, 21, 10, 7),             # 7 groups of 3 channels
    (70000, 1, 8, 1),           # 70,000 rows
    (2, 2, 5003, 1) if SANITIZER else (2, 2, 2 ** 20, 1),  # rows of K = 2^21 (sanitizer: 10006, two v2 chunks)
]
# (R, K): rows of K values, affine per element
RMS_SHAPES = [
    (5, 1),                     # K = 1
    (3, 5),                     # K shorter than a block
    (7, 1000),                  # K not a multiple of a block
    (70000, 8),                 # 70,000 rows
    (2, 10007) if SANITIZER else (2, 2 ** 21),  # rows of K = 2^21 (sanitizer: two v2 chunks)
]
SHAPES = {"batchnorm": BATCH_SHAPES, "batchrenorm": BATCH_SHAPES, "rownorm": ROW_SHAPES, "rmsnorm": RMS_SHAPES}
# (length of the per-statistic reduction, length of the dgamma/dbeta reduction) for a shape
LENGTHS = {
    "batchnorm": lambda s: (s[0] * s[2], s[0] * s[2]),
    "batchrenorm": lambda s: (s[0] * s[2], s[0] * s[2]),
    "rownorm": lambda s: (s[1] // s[3] * s[2], s[0] * s[2]),
    "rmsnorm": lambda s: (s[1], s[0]),
}


@pytest.fixture(scope="module", autouse=True)
def exact_allocations():
    """Under CUBN_SANITIZER=1, one cudaMalloc per array (CuPy's pool off) for the length of this file."""
    if not SANITIZER:
        yield
        return
    cupy = backend.cupy
    cupy.cuda.set_allocator(None)
    yield
    cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


# ---------------------------------------------------------------------------
# Problems: one builder per public function, named after it, giving the kernel's
# NumPy arguments and a float64 reference [(name, value, expected dtype)]
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def inputs(shape, dtype, affine):
    """(x, gamma, beta, dy) from ``random_batch``; gamma and beta None (meaning 1 and 0) unless affine."""
    x, gamma, beta, dy = random_batch(shape, dtype)
    return (x, gamma, beta, dy) if affine else (x, None, None, dy)


def f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def rstd64(var):
    return 1 / np.sqrt(var + EPS)


def batch_moments(x):
    """float64 (mean, var) per channel of x (N, C, S), two-pass."""
    return moments(x, (0, 2))


def acc_stats(x, *stats):
    return [np.asarray(s).astype(acc_dtype(x.dtype)) for s in stats]


def grads(x, values):
    """Name the results of a backward: dx has x's dtype, dgamma and dbeta the accumulation dtype."""
    names = ("dx", "dgamma", "dbeta")[:len(values)]
    return [(n, v, x.dtype if n == "dx" else acc_dtype(x.dtype)) for n, v in zip(names, values)]


def batchnorm_forward(shape, dtype, affine):
    x, gamma, beta, _ = inputs(shape, dtype, affine)

    def reference():
        y, mean, var = bn_train_ref(x, gamma, beta, EPS)
        return [("y", y, x.dtype)] + [(n, v, acc_dtype(x.dtype)) for n, v in
                                      (("mean", mean), ("var", var), ("rstd", rstd64(var)))]
    return (x, gamma, beta, EPS), reference


def batchnorm_backward(shape, dtype, affine):
    x, gamma, _, dy = inputs(shape, dtype, affine)
    mean, var = batch_moments(x)
    mean, rstd = acc_stats(x, mean, rstd64(var))
    args = (dy, x, gamma, mean, rstd)
    return args, lambda: grads(x, ref_bn.batchnorm_backward(*f64(*args)))


def running_stats(x):
    """A running mean and var near the batch's (C,), in the accumulation dtype."""
    rng = np.random.default_rng(5)
    mean, var = batch_moments(x)
    return acc_stats(x, mean + rng.normal(0, 0.5, mean.shape), var * rng.uniform(0.5, 2, var.shape))


def batchnorm_inference(shape, dtype, affine):
    x, gamma, beta, _ = inputs(shape, dtype, affine)
    mean, var = running_stats(x)
    return (x, gamma, beta, mean, var, EPS), lambda: [("y", bn_eval_ref(x, gamma, beta, mean, var, EPS), x.dtype)]


def batchnorm_inference_backward(shape, dtype, affine):
    x, gamma, _, dy = inputs(shape, dtype, affine)
    mean, var = running_stats(x)
    args = (dy, x, gamma, mean, var, EPS)
    return args, lambda: grads(x, ref_bn.batchnorm_inference_backward(*f64(*args[:5]), EPS))


def renorm_running_stats(x):
    """Moving mean and std (C,) off the batch's, so that r and d clip for some channels and not others."""
    rng = np.random.default_rng(7)
    mean, var = batch_moments(x)
    sigma = np.sqrt(var + EPS)
    return acc_stats(x, mean + rng.normal(0, 1, mean.shape) * sigma, sigma * rng.uniform(0.4, 2.5, var.shape))


def batchrenorm_forward(shape, dtype, affine):
    x, gamma, beta, _ = inputs(shape, dtype, affine)
    running_mean, running_std = renorm_running_stats(x)

    def reference():
        y, mean, var, r, d = brn_train_ref(x, gamma, beta, running_mean, running_std, RMAX, DMAX, EPS)
        return [("y", y, x.dtype)] + [(n, v, acc_dtype(x.dtype)) for n, v in
                                      (("mean", mean), ("var", var), ("rstd", rstd64(var)), ("r", r), ("d", d))]
    return (x, gamma, beta, running_mean, running_std, RMAX, DMAX, EPS), reference


def batchrenorm_backward(shape, dtype, affine):
    x, gamma, beta, dy = inputs(shape, dtype, affine)
    _, mean, var, r, d = brn_train_ref(x, gamma, beta, *renorm_running_stats(x), RMAX, DMAX, EPS)
    args = (dy, x, gamma, *acc_stats(x, mean, rstd64(var), r, d))
    return args, lambda: grads(x, ref_brn.batchrenorm_backward(*f64(*args)))


def rownorm_forward(shape, dtype, affine):
    N, C, S, groups = shape
    x, gamma, beta, _ = inputs((N, C, S), dtype, affine)

    def reference():
        mean, var = moments(x.reshape(N, groups, -1), 2)
        return [("y", gn_ref(x, groups, gamma, beta, EPS), x.dtype),
                ("mean", mean, acc_dtype(x.dtype)), ("rstd", rstd64(var), acc_dtype(x.dtype))]
    return (x, gamma, beta, groups, EPS), reference


def rownorm_backward(shape, dtype, affine):
    N, C, S, groups = shape
    x, gamma, _, dy = inputs((N, C, S), dtype, affine)
    mean, var = moments(x.reshape(N, groups, -1), 2)
    args = (dy, x, gamma, *acc_stats(x, mean, rstd64(var)), groups)
    return args, lambda: grads(x, ref_rows.rownorm_backward(*f64(*args[:5]), groups))


def rms64(x):
    return 1 / np.sqrt((np.asarray(x, np.float64) ** 2).mean(axis=1) + EPS)


def rmsnorm_forward(shape, dtype, affine):
    x, gamma, _, _ = inputs(shape, dtype, affine)
    return (x, gamma, EPS), lambda: [("y", rms_ref(x, 1, gamma, EPS), x.dtype), ("rrms", rms64(x), acc_dtype(x.dtype))]


def rmsnorm_backward(shape, dtype, affine):
    x, gamma, _, dy = inputs(shape, dtype, affine)
    args = (dy, x, gamma, *acc_stats(x, rms64(x)))
    return args, lambda: grads(x, ref_rms.rmsnorm_backward(*f64(*args)))


# public function -> (module, problem builder (shape, dtype, affine) -> (args, reference))
PROBLEMS = {f.__name__: (m, f) for m, fs in [
    ("batchnorm", [batchnorm_forward, batchnorm_backward, batchnorm_inference, batchnorm_inference_backward]),
    ("batchrenorm", [batchrenorm_forward, batchrenorm_backward]),
    ("rownorm", [rownorm_forward, rownorm_backward]),
    ("rmsnorm", [rmsnorm_forward, rmsnorm_backward]),
] for f in fs}
FUNCTIONS = {m: [f for f, (mod, _) in PROBLEMS.items() if mod == m] for m in MODULES}


@functools.lru_cache(maxsize=2)
def problem(fn, shape, dtype, affine):
    """(NumPy arguments, cached reference) of one case, shared by all versions of ``fn``."""
    args, reference = PROBLEMS[fn][1](shape, np.dtype(dtype), affine)
    return args, functools.cache(reference)


def versions(module, fn):
    """VERSIONS[fn] of cubn.cuda.<module>; (None,) -- the default -- when that cannot be read, so the
    test itself reports the broken module (test_kernels_cpu.py checks the tables on CPU)."""
    try:
        return importlib.import_module("cubn.cuda." + module).VERSIONS[fn]
    except Exception:
        return (None,)


def launch(fn, version, args):
    """Run cubn.cuda's ``fn`` on device copies of ``args``; (device args, results as a tuple)."""
    cuda = importlib.import_module("cubn.cuda." + PROBLEMS[fn][0])
    dev = [backend.to_device(a, "cuda") if isinstance(a, np.ndarray) else a for a in args]
    out = getattr(cuda, fn)(*dev, version=version)
    return dev, out if isinstance(out, tuple) else (out,)


def shape_id(module, shape):
    return "x".join(map(str, shape[:3])) + (f"-g{shape[3]}" if module == "rownorm" else "")


def case_id(fn, version, dtype, shape, affine=True):
    v = "default" if version is None else f"v{version}"
    return f"{fn}-{v}-{np.dtype(dtype).name}-{shape_id(PROBLEMS[fn][0], shape)}" + ("" if affine else "-no_affine")


# grouped by inputs (BatchNorm and Batch Renorm share theirs), versions innermost, so that
# the cached inputs and references are reused
SHAPE_LISTS = (BATCH_SHAPES, ROW_SHAPES, RMS_SHAPES)
MATCH_CASES = [
    pytest.param(fn, v, dtype, shape, affine, id=case_id(fn, v, dtype, shape, affine))
    for shapes in SHAPE_LISTS for shape in shapes for dtype in DTYPES
    for affine in ((True, False) if shape == shapes[3] else (True,))
    for module in MODULES if SHAPES[module] is shapes for fn in FUNCTIONS[module] for v in versions(module, fn)]


@pytest.mark.parametrize("fn, version, dtype, shape, affine", MATCH_CASES)
def test_kernel_matches_ref64(fn, version, dtype, shape, affine):
    module = PROBLEMS[fn][0]
    args, reference = problem(fn, shape, dtype, affine)
    dev, out = launch(fn, version, args)
    expected = reference()
    assert len(out) == len(expected), f"{fn} returned {len(out)} results, expected {[e[0] for e in expected]}"
    stat_len, param_len = LENGTHS[module](shape)
    for got, (name, want, want_dtype) in zip(out, expected):
        assert backend.device_of(got) == "cuda", f"{name} is a {type(got).__name__}, not a CuPy array"
        assert (got.dtype, got.shape) == (want_dtype, want.shape), (
            f"{name}: {got.dtype} {got.shape}, expected {np.dtype(want_dtype)} {want.shape}")
        length = param_len if name in ("dgamma", "dbeta") else stat_len
        assert_close(got, want, want_dtype, name, scale=max(1.0, math.sqrt(length / 1024)))
    for i, (a, d) in enumerate(zip(args, dev)):
        if isinstance(a, np.ndarray):
            assert np.array_equal(backend.to_numpy(d), a), f"{fn} wrote into its argument {i}"


DETERMINISM_CASES = [
    pytest.param(fn, v, dtype, shapes[-1], id=case_id(fn, v, dtype, shapes[-1]))
    for shapes in SHAPE_LISTS for dtype in DTYPES
    for module in MODULES if SHAPES[module] is shapes for fn in FUNCTIONS[module] for v in versions(module, fn)]


@pytest.mark.parametrize("fn, version, dtype, shape", DETERMINISM_CASES)
def test_two_runs_are_bitwise_identical(fn, version, dtype, shape):
    args, _ = problem(fn, shape, dtype, True)
    first, second = ([backend.to_numpy(r) for r in launch(fn, version, args)[1]] for _ in range(2))
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.tobytes() == b.tobytes(), (
            f"{fn} version {version}: result {i} differs between two runs in {np.sum(a != b)} of {a.size} values")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", list(PROBLEMS))
def test_cupy_path_matches_numpy_path(fn, dtype):
    module = PROBLEMS[fn][0]
    args, _ = problem(fn, SHAPES[module][3], dtype, True)
    want = getattr(importlib.import_module("cubn.ref." + module), fn)(*args)
    want = want if isinstance(want, tuple) else (want,)
    _, got = launch(fn, None, args)
    assert len(got) == len(want), f"cubn.cuda {fn} returned {len(got)} results, cubn.ref {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"{fn} result {i}: {g.dtype} on CuPy, {w.dtype} on NumPy"
        assert_close(g, w, np.float32, f"{fn} result {i}")


@pytest.mark.parametrize("module", MODULES)
def test_cupy_input_dispatches_to_cuda(module):
    x = backend.to_device(np.zeros((2, 3, 4), np.float32), "cuda")
    assert kernel_module(module, x) is importlib.import_module("cubn.cuda." + module)


def recording(fn, calls):
    def record(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    return record


@pytest.mark.parametrize("make_layer, shape, training, module, expected_calls", [
    pytest.param(lambda: nn.BatchNorm2d(3), (4, 3, 5, 6), True, "batchnorm",
                 ["batchnorm_forward", "batchnorm_backward"], id="BatchNorm2d-train"),
    pytest.param(lambda: nn.BatchNorm2d(3), (4, 3, 5, 6), False, "batchnorm",
                 ["batchnorm_inference", "batchnorm_inference_backward"], id="BatchNorm2d-eval"),
    pytest.param(lambda: nn.BatchRenorm2d(3), (4, 3, 5, 6), True, "batchrenorm",
                 ["batchrenorm_forward", "batchrenorm_backward"], id="BatchRenorm2d-train"),
    pytest.param(lambda: nn.GroupNorm(2, 4), (3, 4, 5, 5), True, "rownorm",
                 ["rownorm_forward", "rownorm_backward"], id="GroupNorm"),
    pytest.param(lambda: nn.LayerNorm((5, 6)), (3, 4, 5, 6), True, "rownorm",
                 ["rownorm_forward", "rownorm_backward"], id="LayerNorm"),
    pytest.param(lambda: nn.InstanceNorm2d(3, affine=True), (2, 3, 7, 7), True, "rownorm",
                 ["rownorm_forward", "rownorm_backward"], id="InstanceNorm2d"),
    pytest.param(lambda: nn.RMSNorm(6), (3, 4, 6), True, "rmsnorm",
                 ["rmsnorm_forward", "rmsnorm_backward"], id="RMSNorm"),
])
def test_layer_on_cuda_runs_the_kernels(monkeypatch, make_layer, shape, training, module, expected_calls):
    cuda = importlib.import_module("cubn.cuda." + module)
    calls = []
    for fn in FUNCTIONS[module]:
        monkeypatch.setattr(cuda, fn, recording(getattr(cuda, fn), calls))
    rng = np.random.default_rng(0)
    x = (1.5 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        layer = make_layer().train(training)
        params = np.random.default_rng(1)
        for p in layer.parameters():
            p.data[...] = params.uniform(0.5, 1.5, p.shape)
        layer.to(device)
        xt = cubn.tensor(backend.to_device(x, device), requires_grad=True)
        y = layer(xt)
        y.backward(backend.to_device(dy, device))
        results[device] = [("y", y.data), ("dx", xt.grad)] + [(n, p.grad) for n, p in layer.named_parameters()]
    assert calls == expected_calls, f"cubn.cuda.{module} calls on device='cuda': {calls}"
    for (name, want), (_, got) in zip(results["cpu"], results["cuda"]):
        assert_close(got, want, np.float32, name)
