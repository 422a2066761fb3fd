"""Benchmarks of cubn's kernels: ``python -m cubn.bench norms [--out DIR] [--quick] ...``.

``norms.py`` times every normalization kernel against the same op in PyTorch
and writes JSON, Markdown and PNG reports. This file holds what any benchmark
needs and nothing op-specific:

* ``slug``, ``cuda_version``, ``median``: pure helpers, tested on the CPU;
* ``CupyDevice``: the only GPU-facing code. It times a callable with CUDA
  events (``cupy.cuda.Event``), measures the device-to-device copy bandwidth
  that achieved bandwidths are compared with, and describes the GPU and the
  software. The benchmarks take the device as an argument, so the tests run
  them end to end on NumPy with a CPU stand-in.

How times are taken (METHOD.md of the device notes, in short): warm-up calls
first (kernel compilation, PyTorch's handle creation and the memory pools stay
out of the numbers); then each rep is one call between two events, after a
memset of a buffer larger than the L2 cache, so every rep starts with a cold
cache instead of finding its input left there by the rep before; the figure
reported is the median over the reps. The memset keeps the GPU busy while
Python enqueues the call, so the event time is mostly device time. A second
figure, ``wall_ms``, is host time per call over back-to-back calls, which
includes Python and launch overhead (what a training loop pays when the
kernels are short).
"""
import importlib
import re
import statistics
import subprocess
import time

from .. import backend


def slug(name):
    """A file-name-safe form of a GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "unknown-gpu"


def cuda_version(v):
    """CUDA's integer version as text: 12040 -> '12.4', 13000 -> '13.0'."""
    return f"{v // 1000}.{v % 1000 // 10}"


def median(values):
    return float(statistics.median(values))


class CupyDevice:
    """Times callables on the current CUDA device with CuPy events; see the module docstring.

    ``copy_bytes``: size of each of the two buffers of the copy-bandwidth
    measurement. The buffer cleared before each timed rep holds twice the L2
    cache, at least 256 MiB.
    """

    torch_device = "cuda"

    def __init__(self, copy_bytes=1 << 30):
        cp = backend.cupy
        self.xp = cp
        self.copy_bytes = int(copy_bytes)
        self.props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        self.l2_bytes = int(self.props.get("l2CacheSize") or cp.cuda.Device().attributes.get("L2CacheSize", 0))
        self._flush = cp.empty(max(2 * self.l2_bytes, 256 << 20), dtype=cp.uint8)

    def kernels(self, family):
        """The launcher module ``cubn.cuda.<family>``."""
        return importlib.import_module("cubn.cuda." + family)

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def release(self, torch=None):
        """Hand the memory pools' cached blocks back (CuPy's, and PyTorch's when given)."""
        self.synchronize()
        self.xp.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()

    def time_ms(self, fn, warmup, reps):
        """Per-rep times in ms of ``fn()``: one event pair around each call, cold L2 before each."""
        cp = self.xp
        for _ in range(warmup):
            fn()
        self.synchronize()
        events = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(reps)]
        for start, end in events:
            self._flush.fill(0)    # evict the previous rep's data from L2 (outside the timed region)
            start.record()
            fn()
            end.record()
        events[-1][1].synchronize()
        return [float(cp.cuda.get_elapsed_time(start, end)) for start, end in events]

    def wall_ms(self, fn, reps):
        """Host time per call in ms over ``reps`` back-to-back calls, synchronized at both ends."""
        self.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        self.synchronize()
        return (time.perf_counter() - t) * 1e3 / reps

    def copy_bandwidth(self, reps):
        """Device-to-device copy bandwidth in GB/s (1e9 B/s), counting bytes read plus bytes written.

        Two buffers of ``copy_bytes`` (far larger than L2), cudaMemcpyAsync between
        them, median over ``reps``; the source holds random data, not zeros.
        """
        cp = self.xp
        n = self.copy_bytes // 4
        src = cp.random.default_rng(1).standard_normal(n, dtype=cp.float32)
        dst = cp.empty_like(src)
        ms = self.time_ms(lambda: dst.data.copy_from_device_async(src.data, src.nbytes), 3, reps)
        if not bool((dst == src).all()):
            raise RuntimeError("the device-to-device copy of the bandwidth measurement is wrong")
        return 2 * src.nbytes / (median(ms) * 1e-3) / 1e9

    def torch_problem(self, torch):
        """Why PyTorch cannot be timed next to CuPy here, or None when it can."""
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
        # The events are recorded on CuPy's current stream; PyTorch's work must be on the same one.
        ours, theirs = self.xp.cuda.get_current_stream().ptr, torch.cuda.current_stream().cuda_stream
        if ours != theirs:
            return f"PyTorch's current stream ({theirs:#x}) is not CuPy's ({ours:#x})"
        return None

    def info(self):
        """GPU name and properties, driver, CUDA, CuPy versions."""
        cp = self.xp
        props = self.props
        name = props["name"]
        return {
            "gpu": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": str(cp.cuda.Device().compute_capability),
            "sm_count": props.get("multiProcessorCount"),
            "l2_bytes": self.l2_bytes,
            "memory_bytes": props.get("totalGlobalMem"),
            "driver": _nvidia_smi_driver(),
            "cuda_driver_api": cuda_version(cp.cuda.runtime.driverGetVersion()),
            "cuda_runtime": cuda_version(cp.cuda.runtime.runtimeGetVersion()),
            "cupy": cp.__version__,
        }


def _nvidia_smi_driver():
    """The driver's version as nvidia-smi prints it (e.g. '580.159.04'), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.split("\n")[0].strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
