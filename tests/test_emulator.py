"""The kernel emulator catches what a GPU would punish: each detector against a planted bug.

Planted bugs are one-line edits of the real kernel files, copied to a temporary kernel
folder that the loader then reads; the real launchers run them on the emulator
(CUBN_KERNELS=emulate). Small hand-written kernels cover what the real ones never do
(shuffles outside the mask, shared memory read before any write, launch bounds).
The float16 conversions of common.cuh are checked on all 65,536 half values, against
NumPy on the emulator and on a GPU where one answers.
"""
import numpy as np
import pytest

import cubn.cuda.batchnorm as cuda_bn
import cubn.cuda.rownorm as cuda_rows
from cubn import backend, emulate
from cubn.cuda import loader
from conftest import emulated, gpu

pytestmark = emulated

F32 = loader.dtype_defines(np.float32)


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.setenv("CUBN_KERNELS", "emulate")


@pytest.fixture
def plant(tmp_path, monkeypatch, kernels):
    """plant(file, old, new): the kernel folder becomes a copy in which ``old`` (once in ``file``) reads ``new``."""
    for p in loader.kernel_dir().iterdir():
        if p.suffix in (".cu", ".cuh"):
            (tmp_path / p.name).write_text(p.read_text())
    monkeypatch.setattr(loader, "kernel_dir", lambda: tmp_path)

    def edit(file, old, new):
        text = (tmp_path / file).read_text()
        assert text.count(old) == 1, f"the planted line is not once in {file}: {old!r}"
        (tmp_path / file).write_text(text.replace(old, new))
    return edit


def x_of(shape, dtype=np.float32, seed=0):
    return (1.5 + np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def test_the_unplanted_kernels_pass_the_same_runs(plant):
    """The runs below fail only because of what they plant: unchanged, each one is clean."""
    x = x_of((4, 3, 37))
    cuda_bn.batchnorm_forward(x, None, None, 1e-5, version=2)
    cuda_bn.batchnorm_forward(x, None, None, 1e-5, version=1)
    cuda_rows.rownorm_forward(x_of((2, 3, 5)), None, None, 3, 1e-5, version=1)


def test_missing_syncthreads_is_caught(plant):
    plant("batchnorm.cu", "    __syncthreads();                 // warp 0 reads the results of the other warps\n", "")
    with pytest.raises(emulate.EmulatorError, match=r"batchnorm_stats_v2: partial\[\d+\] is .* under the forward "
                                                    r"thread schedule but .* under the reverse one"):
        cuda_bn.batchnorm_forward(x_of((4, 3, 37)), None, None, 1e-5, version=2)


def test_shuffle_with_an_exited_lane_is_caught(plant):
    plant("batchnorm.cu", "    const Stat t = merge_partials(partial, K, C, c, Stat{0, 0, 0});",
          "    if (threadIdx.x == 31) return;\n    const Stat t = merge_partials(partial, K, C, c, Stat{0, 0, 0});")
    with pytest.raises(emulate.EmulatorError, match=r"batchnorm_stats_finalize_v2, block \(0, 0, 0\): thread \(0, 0, 0\) "
                                                    r"waits at a warp collective at kernels/batchnorm.cu:\d+ "
                                                    r"\(__shfl_down_sync\): lane 31 .* has returned"):
        cuda_bn.batchnorm_forward(x_of((4, 3, 37)), None, None, 1e-5, version=2)


def test_off_by_one_tail_read_is_caught(plant):
    plant("rownorm.cu", "for (i64 k = threadIdx.x; k < K; k += blockDim.x) s += load(xr[k]);",
          "for (i64 k = threadIdx.x; k <= K; k += blockDim.x) s += load(xr[k]);")
    with pytest.raises(emulate.EmulatorError, match=r"rownorm_forward_v1, block \(1, 0, 0\): thread \(15, 0, 0\) "
                                                    r"reads x\[30\], outside its 30 elements"):
        cuda_rows.rownorm_forward(x_of((2, 3, 5)), None, None, 1, 1e-5, version=1)


def test_write_into_a_const_argument_is_caught(plant):
    plant("rownorm.cu", "for (i64 k = threadIdx.x; k < K; k += blockDim.x) s += load(xr[k]);",
          "for (i64 k = threadIdx.x; k < K; k += blockDim.x) { s += load(xr[k]); store((T*)&xr[k], ACC(0)); }")
    with pytest.raises(emulate.EmulatorError, match=r"writes x\[\d+\], but x is a const argument"):
        cuda_rows.rownorm_forward(x_of((2, 3, 5)), None, None, 1, 1e-5, version=1)


def test_barrier_not_reached_by_every_thread_is_caught(plant):
    plant("batchnorm.cu", "    const i64 c = blockIdx.x;                                    // range [0, C)\n    ACC sum = 0;",
          "    const i64 c = blockIdx.x;\n    if (threadIdx.x >= 224) return;\n    ACC sum = 0;")
    with pytest.raises(emulate.EmulatorError, match=r"batchnorm_stats_v1, block \(\d, 0, 0\): the barrier at "
                                                    r"\S*common.cuh:\d+ is reached by 224 of 256 threads: "
                                                    r"thread \(224, 0, 0\) and 31 others have returned"):
        cuda_bn.batchnorm_forward(x_of((4, 3, 37)), None, None, 1e-5, version=1)


def test_endless_kernel_times_out(plant, monkeypatch):
    plant("rownorm.cu", "    for (i64 r = blockIdx.x; r < R; r += gridDim.x) {                                    "
                        "// range [0, R)\n        const T* xr = x + r * K;",
          "    for (i64 r = blockIdx.x; r < R; r += 0) {\n        const T* xr = x + r * K;")
    monkeypatch.setenv("CUBN_EMULATE_TIMEOUT", "1")
    with pytest.raises(emulate.EmulatorError, match=r"rownorm_forward_v1, block .*did not finish within 1 s"):
        cuda_rows.rownorm_forward(x_of((2, 3, 5)), None, None, 1, 1e-5, version=1)


# ---------------------------------------------------------------------------
# Launch arguments against the C signature, and launch limits
# ---------------------------------------------------------------------------
def stats_v1_args(x, eps=np.float32(1e-5)):
    C = x.shape[1]
    out = [np.empty(C, np.float32) for _ in range(3)]
    return (x, *out, np.int64(C), np.int64(x.shape[2]), np.int64(x.shape[0] * x.shape[2]), eps)


@pytest.fixture
def stats_v1(kernels):
    return loader.get_function("batchnorm.cu", "batchnorm_stats_v1", F32)


def test_the_correct_launch_runs(stats_v1):
    x = x_of((4, 3, 37))
    args = stats_v1_args(x)
    stats_v1((3,), (256,), args)
    np.testing.assert_allclose(args[1], x.mean(axis=(0, 2)), rtol=1e-6)


@pytest.mark.parametrize("index, value, match", [
    (7, 1e-5, r"argument 7 \(float eps\) takes a numpy.float32, got Python.float .*8-byte double"),
    (7, np.float64(1e-5), r"argument 7 \(float eps\) takes a numpy.float32 \(4 bytes\), got numpy.float64 \(8 bytes\)"),
    (4, 3, r"argument 4 \(i64 C\) takes a numpy.int64, got Python.int"),
    (4, np.int32(3), r"argument 4 \(i64 C\) takes a numpy.int64 \(8 bytes\), got numpy.int32"),
    (1, np.uint64(0), r"argument 1 \(float\* mean\) is a pointer and takes an array, got numpy.uint64 \(a null pointer "
                      r"is an empty array"),
    (1, np.empty(3, np.float64), r"argument 1 \(float\* mean\) points to float32, got an array of float64"),
    (0, x_of((4, 37, 3)).transpose(0, 2, 1), r"argument 0 \(const float\* x\): the array is not C-contiguous"),
])
def test_argument_not_matching_the_signature_is_refused(stats_v1, index, value, match):
    args = list(stats_v1_args(x_of((4, 3, 37))))
    args[index] = value
    with pytest.raises(emulate.LaunchError, match=r"batchnorm_stats_v1: " + match):
        stats_v1((3,), (256,), tuple(args))


def test_int64_for_an_int_parameter_is_refused(kernels):
    """rownorm's center flag is a C int: an int64 would shift every later argument on a GPU."""
    fn = loader.get_function("rownorm.cu", "rownorm_forward_v1", F32)
    x = x_of((2, 3, 5))
    y, mean, rstd = np.empty_like(x), np.empty(2, np.float32), np.empty(2, np.float32)
    null = np.empty(0, np.float32)
    geometry = tuple(np.int64(v) for v in (2, 15, 5, 3, 1))
    with pytest.raises(emulate.LaunchError, match=r"argument 12 \(int center\) takes a numpy.int32 \(4 bytes\), got numpy.int64"):
        fn((2,), (64,), (x, null, null, y, mean, rstd, *geometry, np.float32(1e-5), np.int64(1)))


def test_launcher_passing_a_python_float_is_caught(kernels, monkeypatch):
    """The planted launcher bug: eps left as a Python float (CuPy would send a double)."""
    monkeypatch.setattr(cuda_bn, "_check_scalar", lambda value, name, acc, low=0.0: float(value))
    with pytest.raises(emulate.LaunchError, match=r"float eps\) takes a numpy.float32, got Python.float"):
        cuda_bn.batchnorm_forward(x_of((4, 3, 37)), None, None, 1e-5)


def test_wrong_argument_count_and_overlap_are_refused(stats_v1):
    args = stats_v1_args(x_of((4, 3, 37)))
    with pytest.raises(emulate.LaunchError, match=r"takes 8 arguments \(const float\* x, .*\), got 7"):
        stats_v1((3,), (256,), args[:7])
    shared = np.empty(6, np.float32)
    with pytest.raises(emulate.LaunchError, match="arguments mean and var overlap"):
        stats_v1((3,), (256,), (args[0], shared[:3], shared[2:5], args[3], *args[4:]))


@pytest.mark.parametrize("grid, block, shared_mem, match", [
    ((3,), (1025,), 0, r"blockDim.x = 1025 exceeds CUDA's 1024"),
    ((3,), (32, 32, 2), 0, r"a block of 2048 threads \(32, 32, 2\) exceeds CUDA's 1024 threads per block"),
    ((3,), (1, 1, 65), 0, r"blockDim.z = 65 exceeds CUDA's 64"),
    ((3, 65536), (256,), 0, r"gridDim.y = 65536 exceeds CUDA's 65535"),
    ((3, 1, 65536), (256,), 0, r"gridDim.z = 65536 exceeds CUDA's 65535"),
    ((3,), (0,), 0, r"every block dimension must be >= 1"),
    ((3,), (256,), 48 * 1024, r"49152 bytes of dynamic shared memory exceed the \d+ available"),
])
def test_launch_limits(stats_v1, grid, block, shared_mem, match):
    with pytest.raises(emulate.LaunchError, match=match):
        stats_v1(grid, block, stats_v1_args(x_of((4, 3, 37))), shared_mem=shared_mem)


def test_dynamic_shared_memory_beyond_48k_needs_the_opt_in(stats_v1):
    with pytest.raises(emulate.LaunchError, match="opt in beyond 48 KiB"):
        stats_v1((3,), (256,), stats_v1_args(x_of((4, 3, 37))), shared_mem=60 * 1024)
    stats_v1.max_dynamic_shared_size_bytes = 64 * 1024
    try:
        stats_v1((3,), (256,), stats_v1_args(x_of((4, 3, 37))), shared_mem=60 * 1024)
    finally:
        stats_v1.max_dynamic_shared_size_bytes = 48 * 1024 - stats_v1.module.static_shared_bytes


# ---------------------------------------------------------------------------
# Hand-written kernels for what the real ones never do
# ---------------------------------------------------------------------------
SMALL = r'''
#include "common.cuh"
extern "C" __global__ void __launch_bounds__(128) bounded(float* out) { out[threadIdx.x] = 1.0f; }
extern "C" __global__ void read_before_write(float* out) {
    __shared__ float s[64];
    out[threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void shuffle_outside_mask(float* out) {
    float v = float(threadIdx.x);
    if (threadIdx.x < 16) v = __shfl_down_sync(0x0000ffffu, v, 1);
    out[threadIdx.x] = v;
}
extern "C" __global__ void divergent_shuffles(float* out) {
    float v = float(threadIdx.x);
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = __shfl_xor_sync(0xffffffffu, v, 2);
    out[threadIdx.x] = v;
}
extern "C" __global__ void votes(const float* x, unsigned* ballot, int* any, int* all) {
    const int p = x[threadIdx.x] > 0.0f;
    ballot[threadIdx.x] = __ballot_sync(0xffffffffu, p);
    any[threadIdx.x] = __any_sync(0xffffffffu, p);
    all[threadIdx.x] = __all_sync(0xffffffffu, p);
}
extern "C" __global__ void half_to_float_all(const half_t* h, float* f, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        f[i] = load(h[i]);
}
extern "C" __global__ void float_to_half_all(const float* f, half_t* h, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        store(&h[i], f[i]);
}
'''


def small_module(backend_name="emulate"):
    if backend_name == "cuda":
        return backend.cupy.RawModule(code=SMALL, options=loader.options())
    return emulate.RawModule(code=SMALL, options=loader.options())


def test_launch_bounds_are_enforced():
    fn = small_module().get_function("bounded")
    fn((1,), (128,), (np.empty(128, np.float32),))
    with pytest.raises(emulate.LaunchError, match=r"bounded: a block of 256 threads .* exceeds its __launch_bounds__\(128\)"):
        fn((1,), (256,), (np.empty(256, np.float32),))


def test_shared_memory_is_poisoned_before_each_block():
    out = np.zeros(64, np.float32)
    small_module().get_function("read_before_write")((1,), (64,), (out,))
    assert np.isnan(out).all(), out


def test_shuffle_from_a_lane_outside_the_mask_is_caught():
    with pytest.raises(emulate.EmulatorError, match=r"thread \(15, 0, 0\) .*__shfl_down_sync\) reads lane 16, which is "
                                                    r"not in the mask 0x0000ffff"):
        small_module().get_function("shuffle_outside_mask")((1,), (32,), (np.empty(32, np.float32),))


def test_lanes_at_different_shuffles_are_caught():
    with pytest.raises(emulate.EmulatorError, match="not the same collective"):
        small_module().get_function("divergent_shuffles")((1,), (32,), (np.empty(32, np.float32),))


def test_votes():
    x = np.where(np.arange(64) % 3 == 0, 1.0, -1.0).astype(np.float32)
    x[32:] = 1.0
    ballot, any_, all_ = np.empty(64, np.uint32), np.empty(64, np.int32), np.empty(64, np.int32)
    small_module().get_function("votes")((1,), (64,), (x, ballot, any_, all_))
    want0 = sum(1 << i for i in range(32) if i % 3 == 0)
    assert (ballot[:32] == want0).all() and (ballot[32:] == 0xFFFFFFFF).all(), ballot
    assert (any_ == 1).all() and (all_[:32] == 0).all() and (all_[32:] == 1).all()


# ---------------------------------------------------------------------------
# float16 conversions: the host path of common.cuh, and the PTX path on a GPU, against NumPy
# ---------------------------------------------------------------------------
def every_half():
    return np.arange(65536, dtype=np.uint32).astype(np.uint16)


def rounding_cases():
    """float32 values that exercise float -> half rounding: every half value, the midpoints between
    neighbours (ties to even), one float32 ulp either side, overflow and the subnormal range."""
    h = every_half().view(np.float16)
    finite = np.sort(np.unique(h[np.isfinite(h)].astype(np.float32)))
    mid = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))])
    edges = np.array([65504, 65519.996, 65520, 65536, 1e10, np.inf, -np.inf, np.nan, 2.0 ** -25, 2.0 ** -26,
                      -(2.0 ** -25), 1e-30, -0.0], np.float32)
    return np.concatenate([finite, mid, near, edges]).astype(np.float32)


@pytest.mark.parametrize("name", [pytest.param("emulate"), pytest.param("cuda", marks=gpu)])
def test_half_conversions_match_numpy_on_every_value(monkeypatch, name):
    if name == "cuda":
        monkeypatch.delenv("CUBN_KERNELS", raising=False)
    module = small_module(name)
    xp = backend.cupy if name == "cuda" else np
    bits = every_half()
    f = xp.empty(bits.size, xp.float32)
    module.get_function("half_to_float_all")((64,), (256,), (xp.asarray(bits.view(np.float16)), f, np.int64(bits.size)))
    f, want = backend.to_numpy(f), bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert (np.isnan(f) == nan).all(), "NaN halves must load as NaN and only those"
    assert (f[~nan].view(np.uint32) == want[~nan].view(np.uint32)).all(), "half -> float differs from NumPy"
    values = rounding_cases()
    h = xp.empty(values.size, xp.float16)
    module.get_function("float_to_half_all")((64,), (256,), (xp.asarray(values), h, np.int64(values.size)))
    with np.errstate(over="ignore"):   # the values past 65504 overflow to inf, as they must
        want = values.astype(np.float16)
    h = backend.to_numpy(h).view(np.uint16)
    nan = np.isnan(want)
    assert (np.isnan(h.view(np.float16)) == nan).all(), "NaN floats must store as NaN halves and only those"
    bad = np.flatnonzero(h[~nan] != want[~nan].view(np.uint16))
    assert bad.size == 0, f"float -> half differs from NumPy's round-to-even at {values[~nan][bad[:5]]}"


# ---------------------------------------------------------------------------
# For readers: printf from a kernel, and one command for one kernel version
# ---------------------------------------------------------------------------
def test_printf_from_a_kernel_reaches_stdout(plant, monkeypatch, capfd):
    plant("batchnorm.cu", "    const ACC mu = block_sum(sum, scratch) / ACC(M);             // [E1]\n",
          "    const ACC mu = block_sum(sum, scratch) / ACC(M);\n"
          "    if (threadIdx.x == 0) printf(\"channel %lld: mean %.4f\\n\", c, (double)mu);\n")
    monkeypatch.setenv("CUBN_EMULATE_SCHEDULES", "forward")    # one schedule: each line printed once
    x = x_of((4, 3, 37))
    capfd.readouterr()
    cuda_bn.batchnorm_forward(x, None, None, 1e-5, version=1)
    lines = capfd.readouterr().out.splitlines()
    assert lines == [f"channel {c}: mean {m:.4f}" for c, m in enumerate(x.astype(np.float64).mean(axis=(0, 2)))]


@pytest.mark.parametrize("argv", [
    ["batchnorm_forward", "--version", "1"],
    ["batchrenorm_backward", "--dtype", "float64"],
    ["rownorm_backward", "--version", "2", "--shape", "2", "6", "50", "--groups", "3"],
    ["rmsnorm_forward", "--shape", "3", "40"],
    ["batchnorm_inference_backward", "--version", "1", "--dtype", "float16"],
])
def test_one_command_runs_one_kernel_version(capsys, monkeypatch, argv):
    from cubn.emulate.__main__ import main
    monkeypatch.setenv("CUBN_KERNELS", "")                   # the command sets it; monkeypatch restores it
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(argv[0]), out
    tol = {"float16": 5e-2, "float64": 1e-9}.get(argv[argv.index("--dtype") + 1] if "--dtype" in argv else "", 1e-4)
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out[1:]]
    assert diffs and max(diffs) < tol, out
