"""Every version of every CUDA kernel against float64 references, on awkward shapes.

Each case runs on two backends: ``cuda`` (CuPy on a GPU; skipped where none answers)
and ``emulate`` (the same launchers and kernel sources on the CPU emulator,
``CUBN_KERNELS=emulate``: barrier, warp, bounds and shared-memory checks on, two thread
schedules that must agree bitwise). The emulated shapes are the GPU shapes scaled down
so that the whole emulated run stays within a few minutes on two cores, with the grid
limits of the launchers lowered in ``test_grid_splitting`` so that small cases cross them.

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
from cubn import backend, emulate, jit
from cubn.ops.norm import kernel_module
from cubn.ref import batchnorm as ref_bn
from cubn.ref import batchrenorm as ref_brn
from cubn.ref import rmsnorm as ref_rms
from cubn.ref import rownorm as ref_rows
from cubn.ref.common import acc_dtype
from ref64_batch import bn_eval_ref, bn_train_ref, brn_train_ref, random_batch
from ref64_rows import gn_ref, moments, rms_ref
from tolerance import assert_close

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
# The emulator runs every thread of every block on the CPU: the same kinds of shape, smaller.
EMU_BATCH_SHAPES = [
    (4, 1, 37),                 # C = 1
    (64, 5, 1),                 # S = 1: the (N, C) case
    (2, 3, 5),                  # M = 10, shorter than a block
    (3, 7, 143),                # M = 429, not a multiple of 32 or 256
    (1, 4, 300),                # N = 1
    (2, 3, 9001),               # M = 18002: five v2 chunks per channel
]
EMU_ROW_SHAPES = [
    (3, 1, 50, 1),              # C = 1, G = 1
    (6, 8, 1, 4),               # S = 1, K = 2
    (5, 33, 1, 1),              # LayerNorm's (R, K, 1) view
    (3, 6, 143, 3),             # K = 286, not a multiple of a block
    (2, 3, 5, 3),               # InstanceNorm (G = C), K = 5
    (2, 15, 7, 5),              # 5 groups, K = 21
    (2, 21, 10, 7),             # 7 groups of 3 channels
    (1, 4, 9, 4),               # N = 1, G = C
    (3, 8200, 1, 1),            # S = 1 rows longer than a block's registers: v2 splits them (sums pass first)
    (2, 2, 5003, 1),            # S > 1 rows of K = 10006: two v2 chunks per row
]
EMU_RMS_SHAPES = [
    (5, 1),                     # K = 1
    (3, 5),                     # K shorter than a block
    (7, 1000),                  # K not a multiple of a block
    (300, 8),                   # many short rows
    (2, 10007),                 # rows of two v2 chunks
]
SHAPE_LISTS = {"cuda": (BATCH_SHAPES, ROW_SHAPES, RMS_SHAPES),
               "emulate": (EMU_BATCH_SHAPES, EMU_ROW_SHAPES, EMU_RMS_SHAPES)}
# backend -> module -> its shape list
SHAPES = {b: {"batchnorm": lists[0], "batchrenorm": lists[0], "rownorm": lists[1], "rmsnorm": lists[2]}
          for b, lists in SHAPE_LISTS.items()}
BACKENDS = {"cuda": pytest.mark.gpu,
            "emulate": pytest.mark.skipif(not emulate.available(), reason="no C++ compiler for the kernel emulator")}
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
    if not SANITIZER or not backend.has_gpu():
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


def batchnorm_stats(shape, dtype, affine):
    x, _, _, _ = inputs(shape, dtype, affine)

    def reference():
        mean, var = batch_moments(x)
        return [(n, v, acc_dtype(x.dtype)) for n, v in (("mean", mean), ("var", var), ("rstd", rstd64(var)))]
    return (x, EPS), reference


def batchnorm_normalize(shape, dtype, affine):
    x, gamma, beta, _ = inputs(shape, dtype, affine)
    mean, var = running_stats(x)
    rstd = acc_stats(x, rstd64(var))[0]
    return (x, gamma, beta, mean, rstd), lambda: [("y", bn_eval_ref(x, gamma, beta, mean, var, EPS), x.dtype)]


def batchnorm_param_grads(shape, dtype, affine):
    x, _, _, dy = inputs(shape, dtype, affine)
    mean, var = running_stats(x)
    args = (dy, x, *acc_stats(x, mean, rstd64(var)))
    return args, lambda: grads(x, (None,) + ref_bn.batchnorm_param_grads(*f64(*args)))[1:]


def batchnorm_dx(shape, dtype, affine):
    """dx with the sums and count of a larger batch (as SyncBatchNorm passes them): this x is 1/3 of it."""
    x, gamma, _, dy = inputs(shape, dtype, affine)
    mean, var = batch_moments(x)
    rng = np.random.default_rng(9)
    count = 3 * shape[0] * shape[2]
    sums = acc_stats(x, *(rng.normal(0, 1, (2, shape[1])) * np.sqrt(count)))
    args = (dy, x, gamma, *acc_stats(x, mean, rstd64(var)), *sums, count)
    return args, lambda: [("dx", ref_bn.batchnorm_dx(*f64(*args[:7]), count), x.dtype)]


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
    ("batchnorm", [batchnorm_forward, batchnorm_backward, batchnorm_inference, batchnorm_inference_backward,
                   batchnorm_stats, batchnorm_normalize, batchnorm_param_grads, batchnorm_dx]),
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


@pytest.fixture
def on(monkeypatch):
    """``on(backend)``: sets up the backend of a case (CUBN_KERNELS=emulate for the emulator)."""
    def use(name):
        if name == "emulate":
            monkeypatch.setenv("CUBN_KERNELS", "emulate")
        else:
            monkeypatch.delenv("CUBN_KERNELS", raising=False)
        return name
    return use


def on_backend(a, name):
    """A NumPy array where the backend's kernels take it: on the GPU for cuda, as it is for the emulator."""
    return backend.to_device(a, "cuda") if name == "cuda" and isinstance(a, np.ndarray) else a


def is_backend_array(a, name):
    return backend.device_of(a) == "cuda" if name == "cuda" else isinstance(a, np.ndarray)


def launch(name, fn, version, args):
    """Run cubn.cuda's ``fn`` (for "jit", cubn.jit's, which has no versions: tests/test_jit.py) on the
    backend's copies of ``args``; (backend args, results as a tuple)."""
    module = importlib.import_module(("cubn.jit." if name == "jit" else "cubn.cuda.") + PROBLEMS[fn][0])
    dev = [on_backend(a.copy() if isinstance(a, np.ndarray) else a, name) for a in args]
    out = getattr(module, fn)(*dev, **with_version(name, version))
    return dev, out if isinstance(out, tuple) else (out,)


def shape_id(module, shape):
    return "x".join(map(str, shape[:3])) + (f"-g{shape[3]}" if module == "rownorm" else "")


def case_id(name, fn, version, dtype, shape, affine=True):
    v = "default" if version is None else f"v{version}"
    return (f"{name}-{fn}-{v}-{np.dtype(dtype).name}-{shape_id(PROBLEMS[fn][0], shape)}"
            + ("" if affine else "-no_affine"))


def skip_on_emulator(name, module, shape, version):
    """rownorm/rmsnorm v1 on the emulated rows of over 8192 channels: v1's dgamma takes one 256-thread
    block per channel, minutes of emulated threads. v1 runs every other shape; v2's split path needs these."""
    return name == "emulate" and module in ("rownorm", "rmsnorm") and version == 1 and shape[1] > 8192


# grouped by inputs (BatchNorm and Batch Renorm share theirs), versions innermost, so that
# the cached inputs and references are reused
MATCH_CASES = [
    pytest.param(name, fn, v, dtype, shape, affine, id=case_id(name, fn, v, dtype, shape, affine), marks=mark)
    for name, mark in BACKENDS.items() for shapes in SHAPE_LISTS[name] for shape in shapes for dtype in DTYPES
    for affine in ((True, False) if shape == shapes[3] else (True,))
    for module in MODULES if SHAPES[name][module] is shapes for fn in FUNCTIONS[module] for v in versions(module, fn)
    if not skip_on_emulator(name, module, shape, v)]


@pytest.mark.parametrize("name, fn, version, dtype, shape, affine", MATCH_CASES)
def test_kernel_matches_ref64(on, name, fn, version, dtype, shape, affine):
    on(name)
    check_against_ref64(name, fn, version, dtype, shape, affine)


def check_against_ref64(name, fn, version, dtype, shape, affine):
    module = PROBLEMS[fn][0]
    args, reference = problem(fn, shape, dtype, affine)
    dev, out = launch(name, fn, version, args)
    expected = reference()
    assert len(out) == len(expected), f"{fn} returned {len(out)} results, expected {[e[0] for e in expected]}"
    stat_len, param_len = LENGTHS[module](shape)
    for got, (result, want, want_dtype) in zip(out, expected):
        assert is_backend_array(got, name), f"{result} is a {type(got).__name__}, not a {name} array"
        assert (got.dtype, got.shape) == (want_dtype, want.shape), (
            f"{result}: {got.dtype} {got.shape}, expected {np.dtype(want_dtype)} {want.shape}")
        length = param_len if result in ("dgamma", "dbeta") else stat_len
        assert_close(got, want, want_dtype, result, scale=max(1.0, math.sqrt(length / 1024)))
    for i, (a, d) in enumerate(zip(args, dev)):
        if isinstance(a, np.ndarray):
            assert np.array_equal(backend.to_numpy(d), a), f"{fn} wrote into its argument {i}"


DETERMINISM_CASES = [
    pytest.param(fn, v, dtype, shapes[-1],
                 id=case_id("cuda", fn, v, dtype, shapes[-1]), marks=pytest.mark.gpu)
    for shapes in SHAPE_LISTS["cuda"] for dtype in DTYPES
    for module in MODULES if SHAPES["cuda"][module] is shapes for fn in FUNCTIONS[module] for v in versions(module, fn)]


@pytest.mark.parametrize("fn, version, dtype, shape", DETERMINISM_CASES)
def test_two_runs_are_bitwise_identical(on, fn, version, dtype, shape):
    """On the GPU (the emulator compares two thread schedules bitwise in every launch already)."""
    on("cuda")
    args, _ = problem(fn, shape, dtype, True)
    first, second = ([backend.to_numpy(r) for r in launch("cuda", fn, version, args)[1]] for _ in range(2))
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.tobytes() == b.tobytes(), (
            f"{fn} version {version}: result {i} differs between two runs in {np.sum(a != b)} of {a.size} values")


BACKEND_PARAMS = [pytest.param(name, marks=mark, id=name) for name, mark in BACKENDS.items()]
# the CPU implementations of the API that take the non-finite tests too: the twins and the compiled loops
CPU_PARAMS = [pytest.param("ref", id="ref"),
              pytest.param("jit", id="jit", marks=pytest.mark.skipif(not jit.available(), reason="no Numba"))]


@pytest.mark.parametrize("name", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", list(PROBLEMS))
def test_kernels_match_the_numpy_twins(on, name, fn, dtype):
    on(name)
    module = PROBLEMS[fn][0]
    args, _ = problem(fn, SHAPES[name][module][3], dtype, True)
    want = getattr(importlib.import_module("cubn.ref." + module), fn)(*args)
    want = want if isinstance(want, tuple) else (want,)
    _, got = launch(name, fn, None, args)
    assert len(got) == len(want), f"cubn.cuda {fn} returned {len(got)} results, cubn.ref {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"{fn} result {i}: {g.dtype} on CuPy, {w.dtype} on NumPy"
        assert_close(g, w, np.float32, f"{fn} result {i}")


@pytest.mark.parametrize("name", BACKEND_PARAMS)
@pytest.mark.parametrize("module", MODULES)
def test_backend_input_dispatches_to_cuda(on, name, module):
    on(name)
    x = on_backend(np.zeros((2, 3, 4), np.float32), name)
    assert kernel_module(module, x) is importlib.import_module("cubn.cuda." + module)


def recording(fn, calls):
    def record(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    return record


@pytest.mark.parametrize("name", BACKEND_PARAMS)
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
def test_layer_runs_the_kernels(monkeypatch, name, make_layer, shape, training, module, expected_calls):
    cuda = importlib.import_module("cubn.cuda." + module)
    calls = []
    for fn in FUNCTIONS[module]:
        monkeypatch.setattr(cuda, fn, recording(getattr(cuda, fn), calls))
    rng = np.random.default_rng(0)
    x = (1.5 + rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    results = {}
    for device in ("cpu", name):
        if device == "emulate":
            monkeypatch.setenv("CUBN_KERNELS", "emulate")
        layer = make_layer().train(training)
        params = np.random.default_rng(1)
        for p in layer.parameters():
            p.data[...] = params.uniform(0.5, 1.5, p.shape)
        layer.to("cuda" if device == "cuda" else "cpu")
        xt = cubn.tensor(on_backend(x, device), requires_grad=True)
        y = layer(xt)
        y.backward(on_backend(dy, device))
        results[device] = [("y", y.data), ("dx", xt.grad)] + [(n, p.grad) for n, p in layer.named_parameters()]
    assert calls == expected_calls, f"cubn.cuda.{module} calls on {name}: {calls}"
    for (result, want), (_, got) in zip(results["cpu"], results[name]):
        assert_close(got, want, np.float32, result)


# Grid limits lowered so that small cases cross every launcher's splitting logic: grid-stride loops
# past gridDim.x (MAX_GRID_X, rownorm's MAX_GRID), BN v2's chunks capped by gridDim.y (MAX_GRID_Y)
# and the elementwise kernels' extra columns per thread to keep gridDim.y under it.
SPLIT_CASES = [
    pytest.param(name, fn, v, dtype, shape, id=case_id(name, fn, v, dtype, shape), marks=mark)
    for name, mark in BACKENDS.items() for dtype in (np.float16, np.float64)
    for module, shape in (("batchnorm", (3, 5, 3000)), ("batchrenorm", (3, 5, 3000)), ("rownorm", (30, 6, 50, 3)),
                          ("rmsnorm", (30, 40)))
    for fn in FUNCTIONS[module] for v in versions(module, fn)]


@pytest.mark.parametrize("name, fn, version, dtype, shape", SPLIT_CASES)
def test_grid_splitting(on, monkeypatch, name, fn, version, dtype, shape):
    on(name)
    monkeypatch.setattr(importlib.import_module("cubn.cuda.batchnorm"), "MAX_GRID_X", 3)
    monkeypatch.setattr(importlib.import_module("cubn.cuda.batchnorm"), "MAX_GRID_Y", 2)
    monkeypatch.setattr(importlib.import_module("cubn.cuda.rownorm"), "MAX_GRID", 3)
    check_against_ref64(name, fn, version, dtype, shape, True)


def stats_modules(name):
    """(batchnorm, rownorm) modules of a backend: the NumPy twins for "ref", the compiled loops for "jit",
    else cubn.cuda's launchers."""
    package = {"ref": "cubn.ref.", "jit": "cubn.jit."}.get(name, "cubn.cuda.")
    return (importlib.import_module(package + "batchnorm"), importlib.import_module(package + "rownorm"))


def with_version(name, version):
    return {} if name in ("ref", "jit") else {"version": version}


# The non-finite contract (cubn/ref/__init__.py): a channel or row that holds an inf or a NaN gets NaN
# mean, var and rstd; every other channel or row keeps finite statistics. Planted at the positions the
# v2 kernels read their shift from (first, middle, last) and elsewhere.
@pytest.mark.parametrize("name", CPU_PARAMS + BACKEND_PARAMS)
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_input_gives_nan_statistics_in_its_channel_only(on, name, version, dtype):
    on(name)
    bn, rows = stats_modules(name)
    x = (2.0 + np.random.default_rng(3).standard_normal((3, 5, 300))).astype(dtype)
    x[1, 0, 7] = np.inf                  # channel 0, row (1, 0): +inf alone (a plain mean would be +inf)
    x[0, 1, 0] = -np.inf                 # channel 1, row (0, 1): at the first value, where a shift is read
    x[2, 2, 299] = np.nan                # channel 2, row (2, 2): the last value
    x[1, 3, 7], x[1, 3, 9] = np.inf, -np.inf   # channel 3, row (1, 3); channel 4 is clean
    kw = with_version(name, version)
    with np.errstate(invalid="ignore"):     # the twins compute inf - inf on purpose here
        _, mean, var, rstd = (backend.to_numpy(a) for a in bn.batchnorm_forward(on_backend(x, name), None, None, EPS, **kw))
        _, rmean, rrstd = (backend.to_numpy(a) for a in rows.rownorm_forward(on_backend(x, name), None, None, 5, EPS, **kw))
    bad = np.array([True, True, True, True, False])
    for stat, values in (("mean", mean), ("var", var), ("rstd", rstd)):
        assert (np.isnan(values) == bad).all(), f"BatchNorm {stat}: {values}"
    bad = np.zeros((3, 5), bool)
    bad[1, 0] = bad[0, 1] = bad[2, 2] = bad[1, 3] = True
    assert (np.isnan(rmean) == bad).all() and (np.isnan(rrstd) == bad).all(), f"rownorm mean {rmean}, rstd {rrstd}"


@pytest.mark.parametrize("name", CPU_PARAMS + BACKEND_PARAMS)
def test_non_finite_value_in_a_split_row(on, name):
    """Rows long enough for v2's chunked statistics: an inf in one chunk of one row."""
    on(name)
    _, rows = stats_modules(name)
    x = np.random.default_rng(4).standard_normal((2, 2, 5003)).astype(np.float32)
    x[1, 1, 4000] = np.inf
    with np.errstate(invalid="ignore"):
        _, mean, rstd = (backend.to_numpy(a) for a in rows.rownorm_forward(on_backend(x, name), None, None, 1, EPS,
                                                                            **with_version(name, 2)))
    assert np.isnan(mean).tolist() == [[False], [True]] and np.isnan(rstd).tolist() == [[False], [True]], (mean, rstd)


# An outlier at the first value of every channel (BN) and row (rownorm): where the v2 kernels used to
# take their shift, so that x - shift lost the low digits of every value (mean errors near 1e-3).
@pytest.mark.parametrize("name", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_outlier_at_the_shift_position_keeps_the_mean_accurate(on, name, dtype):
    on(name)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 3000)).astype(dtype)
    x[0, :, 0] = 1e4
    _, mean, var, _ = (backend.to_numpy(a) for a in
                       stats_modules(name)[0].batchnorm_forward(on_backend(x, name), None, None, EPS, version=2))
    want_mean, want_var = batch_moments(x)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5, err_msg="BatchNorm v2 mean")
    np.testing.assert_allclose(var, want_var, rtol=1e-4, err_msg="BatchNorm v2 var")
    x = rng.standard_normal((2, 2, 5003)).astype(dtype)         # rows of K = 10006: v2's chunked path
    x[:, 0, 0] = 1e4
    _, mean, rstd = (backend.to_numpy(a) for a in
                     stats_modules(name)[1].rownorm_forward(on_backend(x, name), None, None, 1, EPS, version=2))
    want_mean, want_var = moments(x.reshape(2, 1, -1), 2)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5, err_msg="rownorm v2 mean")
    np.testing.assert_allclose(rstd, rstd64(want_var), rtol=1e-4, err_msg="rownorm v2 rstd")


@pytest.mark.gpu
def test_an_empty_cupy_array_is_a_null_pointer():
    """The launchers pass absent gamma/beta/dbeta as empty arrays (cubn.cuda.loader.null), which relies on
    CuPy giving an empty array the data pointer 0; the no_affine cases check the kernels read them so."""
    assert backend.cupy.empty(0, backend.cupy.float32).data.ptr == 0
