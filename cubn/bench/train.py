"""Training throughput: ``python -m cubn.bench train``, cubn against PyTorch eager on one device.

    python -m cubn.bench train                      ResNet-20 with BN, batch 128, on the GPU when one answers
    python -m cubn.bench train --device cpu --quick a smoke run on the CPU (NumPy path), few steps
    python -m cubn.bench train --steps 100 --warmup 20 --batch-size 256

What is timed
-------------
One *training step*, the unit a user pays for: forward through ResNet-20 (BatchNorm after every
convolution, ``cubn.models.resnet20``), cross-entropy, backward, one SGD step with momentum and
weight decay. Both frameworks train the same architecture (the PyTorch twin is written below,
layer for layer) on the same CIFAR-shaped batches (``cubn.data.synthetic_cifar``, moved to the
device once beforehand, so no host-to-device copy is timed), in the same process, on the same
device, one after the other.

How
---
* ``--warmup`` steps first: CUDA kernels compile, cuDNN picks algorithms, memory pools fill.
* Then ``--steps`` timed steps. Each step is timed on the host clock between two device
  synchronizations, so a step's time is everything it costs: Python, launches and GPU work.
  The figure reported is the median over steps; images/s = batch size / median step time.
* Peak memory. PyTorch: ``torch.cuda.max_memory_allocated()`` over the timed steps (exact).
  cubn: the largest ``used_bytes()`` of CuPy's default memory pool seen, sampled after the
  forward, the backward and the optimizer step of every step and after every op of the profiled
  steps (below), minus what was in use before the model was built. Sampling can only miss a
  peak, never invent one, so cubn's figure is a lower bound. The pool's ``total_bytes()`` (what it
  holds from the driver, the figure ``nvidia-smi`` sees) is reported next to it.
* What limits it (the Markdown's last section): a second, separate set of steps in which each
  phase (forward + loss, backward, optimizer step) is synchronized on its own, for both
  frameworks; and cubn's op profile, one more set of steps in which every autodiff Function's
  ``forward`` and ``backward`` is synchronized and timed (grouped by op, e.g. Conv2d backward).
  Synchronizing that often removes the overlap of Python and GPU work, so these figures add up to
  more than the plain step: they say where the time goes, the step time says how much there is.

On the CPU (``--device cpu``, or ``auto`` without a GPU) cubn runs its NumPy path, not the CUDA
kernels, and PyTorch its CPU kernels: the report says so in its title. Those figures exist so
that the harness can be tested anywhere; they say nothing about the GPU.

Reports: ``train-<device slug>[-quick].json`` and ``.md`` under ``--out`` (default
bench/results); the slug is the GPU's name (``nvidia-h100-80gb-hbm3``) or ``cpu-<cpu model>``.
Without a working PyTorch the cubn half still runs and the report says why PyTorch is missing.
"""
import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
from contextlib import contextmanager

import numpy

from .. import backend, cpu, models, optim
from .. import random as cubn_random
from ..data import synthetic_cifar
from ..nn import functional as F
from ..tensor import Function, Tensor
from . import median, slug

MODEL = "resnet20"
NORM = "bn"
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
N_BATCHES = 4             # distinct batches cycled through (data already on the device)
DEFAULTS = dict(batch_size=128, steps=50, warmup=10, phase_steps=10, profile_steps=3)
QUICK = dict(batch_size=128, steps=5, warmup=2, phase_steps=2, profile_steps=1)
PHASES = ("forward", "backward", "optimizer")


# ---------------------------------------------------------------------------
# The two frameworks behind one interface
# ---------------------------------------------------------------------------
class Runner:
    """What both frameworks' runners share: the optimizer step and reading the loss back."""

    def step(self):
        self.optimizer.step()

    def value(self, loss):
        return float(loss.item())


class CubnRunner(Runner):
    """cubn's ResNet-20 + SGD on ``device``; ``loss(i)``, ``backward(loss)``, ``step()`` are the three phases."""

    name = "cubn"

    def __init__(self, device, batches, seed=0):
        self.device = device
        self.cupy = backend.cupy if device == "cuda" else None
        self.base_bytes = self._used()
        cubn_random.manual_seed(seed)
        self.model = models.resnet20(3, 10, NORM).to(device)
        self.model.train()
        self.optimizer = optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.batches = [(Tensor(backend.to_device(x, device)), Tensor(backend.to_device(y, device)))
                        for x, y in batches]
        self.peak_bytes = 0

    def params(self):
        return sum(int(p.data.size) for p in self.model.parameters())

    def loss(self, i):
        x, y = self.batches[i % len(self.batches)]
        return F.cross_entropy(self.model(x), y)

    def backward(self, loss):
        self.optimizer.zero_grad()
        loss.backward()

    def sync(self):
        if self.cupy is not None:
            self.cupy.cuda.Device().synchronize()

    def _used(self):
        return int(self.cupy.get_default_memory_pool().used_bytes()) if self.cupy is not None else 0

    def sample_memory(self):
        """Remember the pool's current use if it is the largest seen (see the module docstring)."""
        if self.cupy is not None:
            self.peak_bytes = max(self.peak_bytes, self._used() - self.base_bytes)

    def reset_peak(self):
        self.peak_bytes = 0

    def memory(self):
        if self.cupy is None:
            return {"peak_bytes": None, "memory_note": "CPU run: no GPU memory"}
        return {"peak_bytes": self.peak_bytes,
                "pool_total_bytes": int(self.cupy.get_default_memory_pool().total_bytes()),
                "memory_note": "max of CuPy pool used_bytes() sampled after each phase and each profiled op, "
                               "minus the bytes in use before the model was built (a lower bound)"}


def torch_resnet20(torch):
    """ResNet-20 in PyTorch, layer for layer ``cubn.models.resnet20(norm="bn")``: 3x3 stem, three stages of
    three basic blocks (16, 32, 64 channels), option-B shortcuts (1x1 strided conv + BN), convolutions
    without bias before BN, global average pool, Linear. PyTorch's default initialization."""
    nn = torch.nn

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.branch = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) \
                if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return torch.relu(self.branch(x) + self.shortcut(x))

    layers, cin = [*conv_bn(3, 16, 3, 1), nn.ReLU()], 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(3):
            layers.append(Block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


class TorchRunner(Runner):
    """The same model, loss and optimizer in PyTorch eager mode."""

    name = "torch"

    def __init__(self, torch, device, batches, seed=0):
        self.torch, self.device = torch, torch.device(device)
        self.cuda = device == "cuda"
        torch.manual_seed(seed)
        self.model = torch_resnet20(torch).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.batches = [(torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))
                        for x, y in batches]

    def params(self):
        return sum(p.numel() for p in self.model.parameters())

    def loss(self, i):
        x, y = self.batches[i % len(self.batches)]
        return self.torch.nn.functional.cross_entropy(self.model(x), y)

    def backward(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def sample_memory(self):
        pass  # PyTorch's allocator keeps the exact peak itself

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def memory(self):
        if not self.cuda:
            return {"peak_bytes": None, "memory_note": "CPU run: no GPU memory"}
        return {"peak_bytes": int(self.torch.cuda.max_memory_allocated()),
                "pool_total_bytes": int(self.torch.cuda.max_memory_reserved()),
                "memory_note": "torch.cuda.max_memory_allocated() over the timed steps (max_memory_reserved() "
                               "as pool total)"}


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
def timed_steps(runner, warmup, steps):
    """Per-step times in ms of ``steps`` full training steps after ``warmup`` untimed ones, and the losses."""
    losses = []
    for i in range(warmup):
        loss = runner.loss(i)
        runner.backward(loss)
        runner.step()
        losses.append(runner.value(loss))
    runner.sync()
    runner.reset_peak()
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        loss = runner.loss(i)
        runner.sample_memory()
        runner.backward(loss)
        runner.sample_memory()
        runner.step()
        runner.sync()
        times.append((time.perf_counter() - start) * 1e3)
        runner.sample_memory()
        losses.append(loss)
    return times, [v if isinstance(v, float) else runner.value(v) for v in losses]


def phase_times(runner, steps, first=0):
    """Median ms of each phase over ``steps`` steps, each phase between two synchronizations."""
    out = {phase: [] for phase in PHASES}
    runner.sync()
    for i in range(first, first + steps):
        t0 = time.perf_counter()
        loss = runner.loss(i)
        runner.sync()
        t1 = time.perf_counter()
        runner.sample_memory()
        runner.backward(loss)
        runner.sync()
        t2 = time.perf_counter()
        runner.sample_memory()
        runner.step()
        runner.sync()
        t3 = time.perf_counter()
        runner.sample_memory()
        for phase, ms in zip(PHASES, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)):
            out[phase].append(ms)
    return {phase: median(ms) for phase, ms in out.items()}


def _functions():
    """Every Function subclass that defines forward or backward itself (so each is wrapped once)."""
    seen, todo = [], list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo += cls.__subclasses__()
    return [c for c in seen if "forward" in vars(c) or "backward" in vars(c)]


@contextmanager
def op_timer(runner, totals):
    """Within this block every Function's forward and backward is synchronized and timed into
    ``totals[(op name, "forward"|"backward")] = [ms, calls]``. Only the outermost op counts when one
    op calls another. The original methods are put back on exit, also after an error."""
    depth = [0]
    saved = []

    def wrap(cls, phase, method):
        def timed(self, *args, **kwargs):
            if depth[0]:
                return method(self, *args, **kwargs)
            depth[0] += 1
            runner.sync()
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                runner.sync()
                entry = totals.setdefault((type(self).__name__, phase), [0.0, 0])
                entry[0] += (time.perf_counter() - start) * 1e3
                entry[1] += 1
                runner.sample_memory()
                depth[0] -= 1
        return timed

    try:
        for cls in _functions():
            for phase in ("forward", "backward"):
                if phase in vars(cls):
                    saved.append((cls, phase, vars(cls)[phase]))
                    setattr(cls, phase, wrap(cls, phase, vars(cls)[phase]))
        yield totals
    finally:
        for cls, phase, method in saved:
            setattr(cls, phase, method)


def op_profile(runner, steps, first=0):
    """cubn's time per op and direction, per step: rows sorted by time, largest first, with the step total."""
    totals = {}
    runner.sync()
    start = time.perf_counter()
    with op_timer(runner, totals):
        for i in range(first, first + steps):
            loss = runner.loss(i)
            runner.backward(loss)
            runner.step()
    runner.sync()
    step_ms = (time.perf_counter() - start) * 1e3 / steps
    rows = [{"op": op, "phase": phase, "ms_per_step": ms / steps, "calls_per_step": calls / steps,
             "share": ms / steps / step_ms} for (op, phase), (ms, calls) in totals.items()]
    rows.sort(key=lambda r: -r["ms_per_step"])
    return {"steps": steps, "step_ms": step_ms, "ops_ms": sum(r["ms_per_step"] for r in rows), "rows": rows}


def measure(runner, batch_size, warmup, steps, phase_steps, profile_steps=0):
    """Everything reported for one framework (a dict), measured in this order: timed steps, phases, profile."""
    times, losses = timed_steps(runner, warmup, steps)
    memory = runner.memory()   # the timed steps' peak, before the synchronized runs below can add samples
    first = warmup + steps
    result = {"params": runner.params(), "step_ms_reps": times, "step_ms": median(times),
              "images_per_s": batch_size / (median(times) * 1e-3),
              "loss_first": _finite(losses[0]), "loss_last": _finite(losses[-1]),
              **memory, "phases_ms": phase_times(runner, phase_steps, first)}
    if profile_steps:
        result["profile"] = op_profile(runner, profile_steps, first + phase_steps)
        if memory["peak_bytes"] is not None and isinstance(runner, CubnRunner):
            result["peak_bytes"] = runner.peak_bytes   # sampled after every op too: a tighter lower bound
    return result


def _finite(v):
    """A loss for the JSON report: the float, or its text ('nan', 'inf') where training diverged."""
    return v if math.isfinite(v) else str(v)


# ---------------------------------------------------------------------------
# Data, environment, the run
# ---------------------------------------------------------------------------
def make_batches(batch_size, n_batches=N_BATCHES, seed=0):
    """``n_batches`` (images, labels) NumPy batches of synthetic CIFAR, standardized per channel."""
    images, labels = synthetic_cifar(batch_size * n_batches, seed=seed)
    images = (images - images.mean(axis=(0, 2, 3), keepdims=True)) / images.std(axis=(0, 2, 3), keepdims=True)
    return [(numpy.ascontiguousarray(images[i * batch_size:(i + 1) * batch_size]),
             labels[i * batch_size:(i + 1) * batch_size]) for i in range(n_batches)]


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else 'cpu'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_info(device):
    """What the run ran on: the GPU (through ``CupyDevice.info``) or the CPU, and the software versions."""
    info = {"device": device, "python": platform.python_version(), "numpy": numpy.__version__,
            "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    if device == "cuda":
        from . import CupyDevice
        gpu = CupyDevice(copy_bytes=0)   # its L2-flush buffer is freed right away, before anything is measured
        info.update(gpu.info())
        del gpu
        backend.cupy.get_default_memory_pool().free_all_blocks()
        info["device_name"] = info["gpu"]
    else:
        info["device_name"] = f"CPU {info['cpu']}"
    return info


def import_torch():
    """(torch, None), or (None, why it is missing)."""
    try:
        import torch
    except Exception as e:   # ImportError, or a torch that fails to load its libraries
        return None, f"torch not importable ({type(e).__name__}: {e})"
    return torch, None


def run(device="cpu", batch_size=128, steps=50, warmup=10, phase_steps=10, profile_steps=3, torch="import",
        seed=0, command=None, log=print):
    """Measure cubn and (where it imports) PyTorch; return the results dict the reports take.

    ``torch``: "import" to import it here, None to skip it, or the module itself.
    """
    meta = {"benchmark": "train", "model": f"{MODEL} (norm={NORM!r})", "batch_size": batch_size, "steps": steps,
            "warmup": warmup, "phase_steps": phase_steps, "profile_steps": profile_steps,
            "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM}, weight_decay={WEIGHT_DECAY})",
            "data": f"cubn.data.synthetic_cifar: {N_BATCHES} batches of {batch_size} x 3 x 32 x 32, on the device",
            "timing": "host clock around each full step (forward, cross-entropy, backward, SGD step) between "
                      "device synchronizations, after warm-up steps; median over steps",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join([pathlib.Path(sys.executable).name] + sys.argv),
            "git": _git_head()}
    meta.update(device_info(device))
    meta["cubn_threads"] = cpu.get_num_threads()       # its BLAS; the CPU path's only multithreaded part
    if torch == "import":
        torch, meta["torch_skipped"] = import_torch()
    elif torch is None:
        meta["torch_skipped"] = "--no-torch"
    if torch is not None:
        meta.update(torch=torch.__version__, torch_cuda=getattr(torch.version, "cuda", None),
                    torch_threads=torch.get_num_threads())
        if device == "cuda" and not torch.cuda.is_available():
            meta["torch_skipped"], torch = "torch.cuda.is_available() is False", None
        elif device == "cuda":
            meta.update(cudnn_benchmark=torch.backends.cudnn.benchmark,
                        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    batches = make_batches(batch_size, seed=seed)
    results = {"meta": meta}
    log(f"{meta['device_name']}: cubn {MODEL}, batch {batch_size}, {warmup} warm-up + {steps} timed steps ...")
    results["cubn"] = measure(CubnRunner(device, batches, seed), batch_size, warmup, steps, phase_steps,
                              profile_steps)
    log(f"  cubn  {results['cubn']['step_ms']:9.2f} ms/step  {results['cubn']['images_per_s']:9.1f} images/s")
    _release(device)
    if torch is not None:
        try:
            results["torch"] = measure(TorchRunner(torch, device, batches, seed), batch_size, warmup, steps,
                                       phase_steps)
            log(f"  torch {results['torch']['step_ms']:9.2f} ms/step  {results['torch']['images_per_s']:9.1f} images/s")
            results["speedup"] = results["torch"]["step_ms"] / results["cubn"]["step_ms"]
        except Exception as e:   # say what failed; the cubn half is still worth its report
            results["torch_error"] = f"{type(e).__name__}: {e}"
            log(f"  torch failed: {results['torch_error']}")
    return results


def _release(device):
    if device == "cuda":
        backend.cupy.cuda.Device().synchronize()
        backend.cupy.get_default_memory_pool().free_all_blocks()


def _git_head():
    from .norms import _git_head as head
    return head()


# ---------------------------------------------------------------------------
# Reports (pure: a results dict in, files out)
# ---------------------------------------------------------------------------
def report_stem(meta):
    """'train-<gpu slug>' or 'train-cpu-<cpu slug>', with '-quick' for --quick runs."""
    name = meta["gpu"] if meta["device"] == "cuda" else f"cpu {meta['cpu']}"
    return f"train-{slug(name)}" + ("-quick" if meta.get("quick") else "")


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _mib(b):
    return None if b is None else b / 2**20


def markdown(results):
    """Title and environment, the cubn/PyTorch table, and 'What limits it' (phases and the op profile)."""
    m = results["meta"]
    on_cpu = m["device"] != "cuda"
    where = f"CPU ({m['cpu']}, {m['cpu_count']} cores): NumPy path, not the CUDA kernels" if on_cpu else m["gpu"]
    lines = [f"# Training throughput: {m['model']}, batch {m['batch_size']}, cubn vs PyTorch eager on {where}", ""]
    if on_cpu:
        lines += ["**CPU numbers.** cubn runs its NumPy twins here and PyTorch its CPU kernels; none of this "
                  "says anything about GPU speed.", ""]
    lines += [f"- date {m.get('date')}, git {m.get('git')}, command `{m.get('command')}`",
              f"- Python {m.get('python')}, NumPy {m.get('numpy')}, PyTorch {m.get('torch', 'not imported')}"
              + (f" (CUDA {m['torch_cuda']})" if m.get("torch_cuda") else "")
              + (f", CuPy {m['cupy']}, driver {m.get('driver')}, CUDA runtime {m.get('cuda_runtime')}"
                 if not on_cpu else "")
              + f"; {m.get('platform')}",
              f"- data: {m['data']}; optimizer {m['optimizer']}",
              f"- timing: {m['timing']}; {m['warmup']} warm-up + {m['steps']} timed steps",
              f"- threads: cubn (BLAS) {m.get('cubn_threads')}, PyTorch {m.get('torch_threads', '-')}"]
    if m.get("cudnn_benchmark") is not None:
        lines.append(f"- PyTorch defaults kept: cudnn.benchmark={m['cudnn_benchmark']}, "
                     f"cudnn.allow_tf32={m['cudnn_allow_tf32']}")
    if m.get("torch_skipped"):
        lines.append(f"- PyTorch not measured: {m['torch_skipped']}")
    if results.get("torch_error"):
        lines.append(f"- PyTorch failed: {results['torch_error']}")
    lines += ["", "| framework | weights | step ms (median) | images/s | peak GPU MiB | forward ms | backward ms "
                  "| optimizer ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for who, label in (("cubn", "cubn"), ("torch", "PyTorch")):
        r = results.get(who)
        if r is None:
            continue
        p = r["phases_ms"]
        lines.append(f"| {label} | {r['params']:,} | {_fmt(r['step_ms'], '.2f')} | {_fmt(r['images_per_s'], '.1f')} "
                     f"| {_fmt(_mib(r.get('peak_bytes')), '.1f')} | {_fmt(p['forward'], '.2f')} "
                     f"| {_fmt(p['backward'], '.2f')} | {_fmt(p['optimizer'], '.2f')} |")
    if results.get("speedup"):
        s = results["speedup"]
        lines += ["", f"cubn is **{s:.2f}x** PyTorch's speed here (PyTorch step time / cubn step time; "
                      f"above 1: cubn is faster)."]
    lines += ["", "Peak memory: " + "; ".join(f"{who}: {results[who]['memory_note']}"
                                               for who in ("cubn", "torch") if who in results)]
    lines += _limits(results, on_cpu)
    return "\n".join(lines) + "\n"


def _limits(results, cpu):
    c = results["cubn"]
    p = c["phases_ms"]
    total = sum(p.values())
    lines = ["", "## What limits it" + (" (CPU numbers)" if cpu else ""), "",
             "Each phase synchronized on its own (median ms over "
             f"{results['meta']['phase_steps']} steps measured after the timed ones):", "",
             "| phase | cubn ms | cubn share |" + (" PyTorch ms | PyTorch share |" if "torch" in results else ""),
             "|---|---:|---:|" + ("---:|---:|" if "torch" in results else "")]
    t = results.get("torch", {}).get("phases_ms")
    for phase in PHASES:
        row = f"| {phase} | {p[phase]:.2f} | {100 * p[phase] / total:.0f}% |"
        if t:
            row += f" {t[phase]:.2f} | {100 * t[phase] / sum(t.values()):.0f}% |"
        lines.append(row)
    prof = c.get("profile")
    if prof:
        lines += ["", f"cubn's op profile ({prof['steps']} step(s), every op's forward and backward synchronized "
                      f"and timed): {prof['step_ms']:.2f} ms per step, of which {prof['ops_ms']:.2f} ms inside "
                      "autodiff ops; the rest is the tape walk, module calls, the optimizer's per-parameter "
                      "updates and Python.", "",
                  "Largest, forward and backward together: " + _top_ops(prof["rows"]) + ".", "",
                  "| op | direction | ms per step | calls per step | share of step |", "|---|---|---:|---:|---:|"]
        for r in prof["rows"][:12]:
            lines.append(f"| {r['op']} | {r['phase']} | {r['ms_per_step']:.2f} | {r['calls_per_step']:.0f} "
                         f"| {100 * r['share']:.1f}% |")
        if len(prof["rows"]) > 12:
            rest = prof["rows"][12:]
            lines.append(f"| {len(rest)} more | | {sum(r['ms_per_step'] for r in rest):.2f} | "
                         f"{sum(r['calls_per_step'] for r in rest):.0f} | "
                         f"{100 * sum(r['share'] for r in rest):.1f}% |")
    return lines


def _top_ops(rows, n=3):
    """'Conv2d 69%, BatchNormTrain 24%, Relu 4% of the step': each op's two directions summed."""
    share = {}
    for r in rows:
        share[r["op"]] = share.get(r["op"], 0.0) + r["share"]
    top = sorted(share.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{op} {100 * s:.0f}%" for op, s in top) + " of the step"


def write_reports(results, out_dir):
    """Write <stem>.json and <stem>.md under ``out_dir``; return the two paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report_stem(results["meta"])
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    text = json.dumps(results, indent=1, allow_nan=False, default=_json_default)
    json_path.write_text(text + "\n")
    md_path.write_text(markdown(results))
    return [json_path, md_path]


def _json_default(v):
    if isinstance(v, numpy.generic):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


# ---------------------------------------------------------------------------
# Command line (wired into ``python -m cubn.bench`` by __main__.py)
# ---------------------------------------------------------------------------
def add_arguments(p):
    """The ``train`` subcommand's options."""
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda when a GPU answers through CuPy, else cpu")
    p.add_argument("--batch-size", type=_at_least(1), help=f"images per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--steps", type=_at_least(1),
                   help=f"timed steps (default {DEFAULTS['steps']}, {QUICK['steps']} with --quick)")
    p.add_argument("--warmup", type=_at_least(0),
                   help=f"untimed steps first (default {DEFAULTS['warmup']}, {QUICK['warmup']} with --quick)")
    p.add_argument("--out", default="bench/results", help="folder for the reports (default bench/results)")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run, reports named ...-quick")
    p.add_argument("--no-torch", action="store_true", help="do not measure PyTorch")


def _at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value
    return parse


def main(args, argv):
    """Run the benchmark for parsed ``args``; returns the exit status (2: cuda asked for but none answers)."""
    if args.device == "auto":
        device = "cuda" if backend.has_gpu() else "cpu"
    elif args.device == "cuda" and not backend.has_gpu():
        print("cubn.bench train: --device cuda, but no CUDA device answers through CuPy "
              "(use --device cpu for a CPU run)", file=sys.stderr)
        return 2
    else:
        device = args.device
    settings = dict(QUICK if args.quick else DEFAULTS)
    settings.update({k: getattr(args, k) for k in ("batch_size", "steps", "warmup") if getattr(args, k) is not None})
    results = run(device, torch=None if args.no_torch else "import",
                  command="python -m cubn.bench " + " ".join(argv), **settings)
    results["meta"]["quick"] = args.quick
    for path in write_reports(results, args.out):
        print(f"wrote {path}")
    return 0
