"""Normalization kernels against PyTorch: ``python -m cubn.bench norms``.

For every case below, cubn's time through the kernel API (``cubn.cuda.<family>``
functions called directly, at their default versions, or every version with
``--versions``), the same op's time in PyTorch in the same process on the same
GPU when ``torch`` imports, the achieved bandwidth against the op's minimum
bytes, that bandwidth as a percentage of the GPU's measured device-to-device
copy bandwidth, and the speedup ``PyTorch time / cubn time`` (above 1: cubn is
faster). Times are medians of CUDA-event times; see ``cubn/bench/__init__.py``.

Cases
-----
=====  ================================  ==============================  =================================
op     phases                            shapes                          PyTorch
=====  ================================  ==============================  =================================
bn     forward (training), backward,     CONV_SHAPES                     F.batch_norm with running stats
       inference                                                         (training=True / False)
brn    forward (training), backward      CONV_SHAPES                     none exists: F.batch_norm training
                                                                         (said in the note column)
ln     forward, backward                 ROW_SHAPES, over the last dim   F.layer_norm
gn     forward, backward                 CONV_SHAPES with C % 32 == 0    F.group_norm(num_groups=32)
in     forward, backward                 CONV_SHAPES, affine=False       F.instance_norm
rms    forward, backward                 ROW_SHAPES, over the last dim   F.rms_norm
=====  ================================  ==============================  =================================

Backward is timed alone: the forward that saves the statistics runs once,
outside the timed region (cubn: the NumPy twin's forward on the GPU arrays;
PyTorch: one forward that builds the graph, then ``torch.autograd.grad`` with a
fixed random dy and ``retain_graph=True`` in the timed region). Both produce
dx, dgamma and dbeta (dx alone for InstanceNorm without affine in PyTorch; dx
and dgamma for RMSNorm). cubn's forward returns the batch statistics; folding
them into running buffers is two tiny (C,) updates in the Module, not timed,
while PyTorch's training forward updates its running buffers inside the op.

Minimum bytes
-------------
"Minimum" means compulsory traffic: every input the op needs read once from
device memory and every output it returns written once, nothing re-read, no
intermediates. A kernel that reads x twice (a statistics pass, then a
normalize pass) moves 1.5x the forward minimum, so it shows at most about 67%
of the copy bandwidth even when each of its passes runs at full speed. The
same byte count is used for PyTorch's time, so the two GB/s columns compare
like with like.

With E the elements of x, b the bytes of one stored element (4 for float32,
2 for float16), a the bytes of one statistic or parameter (4: they are float32
for float16 and float32 input), P the parameter length (C for per-channel
affine, the row length K for LayerNorm and RMSNorm) and S the number of
statistics (C for BatchNorm, N*groups rows for Layer/Instance/Group Norm,
rows for RMSNorm):

=================  =====================================  ==========================================
phase              bytes                                   what is moved
=================  =====================================  ==========================================
bn forward         2*E*b + 2*P*a + 3*S*a                   x, y | gamma, beta | mean, var, rstd
bn backward        3*E*b + 3*P*a + 2*S*a                   dy, x, dx | gamma, dgamma, dbeta | mean, rstd
bn inference       2*E*b + 2*P*a + 2*S*a                   x, y | gamma, beta | mean, var
brn forward        2*E*b + 2*P*a + 7*S*a                   x, y | gamma, beta | running_mean,
                                                           running_std, mean, var, rstd, r, d
brn backward       3*E*b + 3*P*a + 4*S*a                   dy, x, dx | gamma, dgamma, dbeta |
                                                           mean, rstd, r, d
ln/gn forward      2*E*b + 2*P*a + 2*S*a                   x, y | gamma, beta | mean, rstd
ln/gn backward     3*E*b + 3*P*a + 2*S*a                   dy, x, dx | gamma, dgamma, dbeta | mean, rstd
in forward         2*E*b + 2*S*a                           affine=False: no gamma, beta to read
in backward        3*E*b + 2*P*a + 2*S*a                   dgamma, dbeta are still returned
rms forward        2*E*b + 1*P*a + 1*S*a                   x, y | gamma | rrms
rms backward       3*E*b + 2*P*a + 1*S*a                   dy, x, dx | gamma, dgamma | rrms
=================  =====================================  ==========================================

Example: bn forward on (128, 16, 32, 32) float32: E = 2,097,152, P = S = 16,
2*E*4 + 2*16*4 + 3*16*4 = 16,777,536 bytes.

Layout of this file: the case table, the byte formulas, the inputs and kernel
arguments, the PyTorch ops, the run loop, the reports. Everything but the
device (``CupyDevice``) works on NumPy, which is how tests/test_bench.py runs
it end to end on a CPU.
"""
import dataclasses
import datetime
import importlib
import json
import math
import pathlib
import platform
import re
import subprocess
import sys

import numpy

from ..backend import get_array_module
from ..ref.common import acc_dtype
from . import median, slug

# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------
CNN_SHAPES = ((128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8))            # small-CNN activations, batch 128
IMAGENET_SHAPES = ((32, 64, 112, 112), (32, 256, 56, 56), (64, 512, 7, 7))      # ImageNet-size activations
CONV_SHAPES = CNN_SHAPES + IMAGENET_SHAPES
ROW_SHAPES = ((4096, 768), (8192, 4096))                                        # LayerNorm/RMSNorm rows
GN_GROUPS = 32
EPS = 1e-5
MOMENTUM = 0.1                  # PyTorch's BatchNorm default, for its running-stat update
RMAX, DMAX = 3.0, 5.0           # Batch Renorm clipping (the paper's final values)
DTYPES = ("float32", "float16")
FORWARD_BACKWARD = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class Op:
    name: str              # shown in the reports
    family: str            # kernel module: cubn.cuda.<family>, NumPy twin cubn.ref.<family>
    phases: tuple
    shapes: tuple
    torch: str             # the PyTorch function it is compared with
    affine: bool = True
    note: str = ""         # said in every row of this op


OPS = {
    "bn": Op("BatchNorm2d", "batchnorm", ("forward", "backward", "inference"), CONV_SHAPES, "batch_norm"),
    "brn": Op("BatchRenorm2d", "batchrenorm", FORWARD_BACKWARD, CONV_SHAPES, "batch_norm",
              note="no PyTorch Batch Renorm: PyTorch column is F.batch_norm (training)"),
    "ln": Op("LayerNorm", "rownorm", FORWARD_BACKWARD, ROW_SHAPES, "layer_norm"),
    "gn": Op(f"GroupNorm(G={GN_GROUPS})", "rownorm", FORWARD_BACKWARD,
             tuple(s for s in CONV_SHAPES if s[1] % GN_GROUPS == 0), "group_norm"),
    "in": Op("InstanceNorm2d", "rownorm", FORWARD_BACKWARD, CONV_SHAPES, "instance_norm", affine=False),
    "rms": Op("RMSNorm", "rmsnorm", FORWARD_BACKWARD, ROW_SHAPES, "rms_norm"),
}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str          # a key of OPS
    phase: str       # "forward", "backward" or "inference"
    shape: tuple     # the user's tensor: (N, C, H, W), or (rows, features) for ln and rms

    @property
    def spec(self):
        return OPS[self.op]

    @property
    def function(self):
        """The kernel-API function timed, e.g. 'batchnorm_forward'."""
        return f"{self.spec.family}_{self.phase}"

    @property
    def label(self):
        return f"{self.op} {self.phase} {'x'.join(map(str, self.shape))}"

    @property
    def view(self):
        """The kernel API's view of ``shape`` (see cubn/ref/__init__.py)."""
        if self.op in ("ln", "rms"):    # normalized over the last dimension
            rows = math.prod(self.shape[:-1])
            return (rows, self.shape[-1], 1) if self.op == "ln" else (rows, self.shape[-1])
        return (self.shape[0], self.shape[1], math.prod(self.shape[2:]))

    @property
    def groups(self):
        """rownorm's ``groups`` (LayerNorm 1, GroupNorm G, InstanceNorm C); None for other families."""
        return {"ln": 1, "gn": GN_GROUPS, "in": self.shape[1]}.get(self.op)

    @property
    def n_params(self):
        """P: length of gamma, beta, dgamma, dbeta."""
        return self.view[1]

    @property
    def n_stats(self):
        """S: number of statistics (per channel, per row, or per (n, group))."""
        if self.groups is not None:
            return self.view[0] * self.groups
        return self.view[0] if self.op == "rms" else self.view[1]


def cases(ops=None):
    """Every case of the ops named (all of OPS by default), in table order."""
    return [Case(op, phase, shape) for op in (ops or OPS) for phase in OPS[op].phases for shape in OPS[op].shapes]


# ---------------------------------------------------------------------------
# Minimum bytes (the table in the module docstring)
# ---------------------------------------------------------------------------
# (family, phase) -> (full-size tensors, parameter vectors read, parameter vectors written, statistic vectors)
TRAFFIC = {
    ("batchnorm", "forward"): (2, 2, 0, 3),      # x, y | gamma, beta | - | mean, var, rstd
    ("batchnorm", "backward"): (3, 1, 2, 2),     # dy, x, dx | gamma | dgamma, dbeta | mean, rstd
    ("batchnorm", "inference"): (2, 2, 0, 2),    # x, y | gamma, beta | - | mean, var
    ("batchrenorm", "forward"): (2, 2, 0, 7),    # x, y | gamma, beta | - | running_mean, running_std,
                                                 #                          mean, var, rstd, r, d
    ("batchrenorm", "backward"): (3, 1, 2, 4),   # dy, x, dx | gamma | dgamma, dbeta | mean, rstd, r, d
    ("rownorm", "forward"): (2, 2, 0, 2),        # x, y | gamma, beta | - | mean, rstd
    ("rownorm", "backward"): (3, 1, 2, 2),       # dy, x, dx | gamma | dgamma, dbeta | mean, rstd
    ("rmsnorm", "forward"): (2, 1, 0, 1),        # x, y | gamma | - | rrms
    ("rmsnorm", "backward"): (3, 1, 1, 1),       # dy, x, dx | gamma | dgamma | rrms
}


def min_bytes(case, dtype):
    """Compulsory bytes of ``case`` with ``dtype`` input: each input read once, each output written once."""
    big, params_read, params_written, stats = TRAFFIC[(case.spec.family, case.phase)]
    b = numpy.dtype(dtype).itemsize
    a = numpy.dtype(acc_dtype(dtype)).itemsize
    if not case.spec.affine:
        params_read = 0
    return (big * math.prod(case.shape) * b
            + (params_read + params_written) * case.n_params * a + stats * case.n_stats * a)


# ---------------------------------------------------------------------------
# Inputs and kernel arguments (NumPy or CuPy: ``xp``)
# ---------------------------------------------------------------------------
def make_arrays(case, dtype, xp, seed=0):
    """Random inputs in the kernel API's view: x with a non-zero mean, dy, gamma, beta, and given statistics.

    Never zeros (METHOD.md: zeros hide unwritten outputs and can run faster than real data).
    """
    rng = xp.random.default_rng(seed)
    acc = acc_dtype(dtype)

    def normal(shape, scale=1.0, shift=0.0):
        return (rng.standard_normal(shape, dtype=numpy.float32) * scale + shift).astype(acc)

    P, C = case.n_params, case.view[1]
    arrays = {
        "x": (rng.standard_normal(case.view, dtype=numpy.float32) * 2 + 0.5).astype(dtype),
        "dy": rng.standard_normal(case.view, dtype=numpy.float32).astype(dtype),
        "gamma": normal(P, 0.1, 1.0) if case.spec.affine else None,
        "beta": normal(P, 0.1) if case.spec.affine and case.op != "rms" else None,
    }
    if case.op == "bn":          # inference: the given (running) mean and var
        arrays["mean"] = normal(C, 0.1, 0.5)
        arrays["var"] = xp.abs(normal(C)) + acc(0.5)
    if case.op == "brn":         # moving statistics far enough from the batch's that r and d clip in some channels
        arrays["running_mean"] = normal(C, 0.5, 0.5)
        arrays["running_std"] = xp.abs(normal(C)) + acc(0.5)
    return arrays


def kernel_args(case, arrays):
    """The positional arguments of ``case.function`` (the cubn/ref signature).

    A backward's saved statistics come from the NumPy twin's forward on the same
    arrays, so timing a backward kernel does not depend on the forward kernel.
    """
    ref = importlib.import_module("cubn.ref." + case.spec.family)
    x, dy, gamma, beta = arrays["x"], arrays["dy"], arrays["gamma"], arrays["beta"]
    family, phase = case.spec.family, case.phase
    if family == "batchnorm":
        if phase == "forward":
            return (x, gamma, beta, EPS)
        if phase == "inference":
            return (x, gamma, beta, arrays["mean"], arrays["var"], EPS)
        _, mean, _, rstd = ref.batchnorm_forward(x, gamma, beta, EPS)
        return (dy, x, gamma, mean, rstd)
    if family == "batchrenorm":
        forward = (x, gamma, beta, arrays["running_mean"], arrays["running_std"], RMAX, DMAX, EPS)
        if phase == "forward":
            return forward
        _, mean, _, rstd, r, d = ref.batchrenorm_forward(*forward)
        return (dy, x, gamma, mean, rstd, r, d)
    if family == "rownorm":
        if phase == "forward":
            return (x, gamma, beta, case.groups, EPS)
        _, mean, rstd = ref.rownorm_forward(x, gamma, beta, case.groups, EPS)
        return (dy, x, gamma, mean, rstd, case.groups)
    if phase == "forward":       # rmsnorm
        return (x, gamma, EPS)
    _, rrms = ref.rmsnorm_forward(x, gamma, EPS)
    return (dy, x, gamma, rrms)


def versions_of(module, function):
    """The ``version=`` values ``--versions`` times: all that ``module.VERSIONS`` lists for ``function``,
    or [None] (the default) where it lists none."""
    return list((getattr(module, "VERSIONS", None) or {}).get(function) or [None])


def default_version(module, function):
    """The version ``version=None`` runs, as the module's DEFAULT_VERSIONS names it, or None."""
    return (getattr(module, "DEFAULT_VERSIONS", None) or {}).get(function)


def bind(module, function, args, version=None):
    """``module.function(*args)`` as a callable; ``version=`` passed only when a version is asked for,
    so the NumPy twins (which take no version) run through the same code."""
    fn = getattr(module, function)
    if version is None:
        return lambda: fn(*args)
    return lambda: fn(*args, version=version)


def rel_err(got, want):
    """Largest ||got - want|| / ||want|| over the outputs (absolute where ||want|| is 0), in float64."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if w is None:
            continue
        if g is None or g.shape != w.shape:
            raise ValueError(f"an output has shape {getattr(g, 'shape', None)}, the NumPy twin's {w.shape}")
        xp = get_array_module(w)
        g, w = xp.asarray(g, dtype=numpy.float64), xp.asarray(w, dtype=numpy.float64)
        den = float(xp.linalg.norm(w.ravel()))
        num = float(xp.linalg.norm((g - w).ravel()))
        worst = max(worst, num / den if den else num)
    return worst


# float16 and float32 kernels against the NumPy twin (same dtype, same formulas): a wrong kernel is off by O(1)
CHECK_TOL = {"float32": 1e-3, "float16": 1e-2}

# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------


def _tensor(torch, a):
    """A zero-copy PyTorch view of a NumPy or CuPy array (None stays None): DLPack, else the
    CUDA array interface (CuPy) or the buffer protocol (NumPy) through torch.as_tensor."""
    if a is None:
        return None
    try:
        return torch.from_dlpack(a)
    except Exception:
        return torch.as_tensor(a, device="cuda" if hasattr(a, "__cuda_array_interface__") else "cpu")


def _torch_forward(case, torch, param_dtype, arrays, device):
    """(forward(x, weight, bias) -> y, weight, bias) for PyTorch's twin of ``case``, params in ``param_dtype``."""
    F = torch.nn.functional

    def param(key):
        a = arrays.get(key)
        return None if a is None else _tensor(torch, a).to(param_dtype)

    weight, bias = param("gamma"), param("beta")
    K = case.shape[-1]
    if case.op in ("bn", "brn"):
        if case.phase == "inference":
            rm, rv = param("mean"), param("var")
        else:
            rm = torch.zeros(case.shape[1], dtype=param_dtype, device=device)
            rv = torch.ones(case.shape[1], dtype=param_dtype, device=device)
        training = case.phase != "inference"
        return (lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=training, momentum=MOMENTUM, eps=EPS),
                weight, bias)
    if case.op == "ln":
        return lambda x, w, b: F.layer_norm(x, (K,), w, b, EPS), weight, bias
    if case.op == "gn":
        return lambda x, w, b: F.group_norm(x, GN_GROUPS, w, b, EPS), weight, bias
    if case.op == "in":
        return lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=EPS), weight, bias
    return lambda x, w, b: F.rms_norm(x, (K,), w, EPS), weight, bias


def torch_op(case, arrays, torch):
    """(callable, description, note): PyTorch's op for ``case`` on the same arrays (zero-copy).

    Parameters are given in the dtype PyTorch's fast path takes. BatchNorm:
    float32, as cubn stores them (for float16 input that is PyTorch's mixed mode,
    cuDNN's, as under autocast); should PyTorch reject that, the input's dtype.
    Layer/Group/Instance Norm and RMSNorm: the input's dtype, as after
    ``module.half()`` (with float32 weights on float16 input PyTorch's fused
    rms_norm falls back to a slower composite). The note says when they are
    not float32.
    """
    x = _tensor(torch, arrays["x"]).reshape(case.shape)
    tried = []
    for param_dtype in dict.fromkeys((torch.float32, x.dtype) if case.op in ("bn", "brn") else (x.dtype,)):
        try:
            forward, weight, bias = _torch_forward(case, torch, param_dtype, arrays, x.device)
            probe = forward(x, weight, bias)
        except (RuntimeError, TypeError) as e:
            tried.append(f"{param_dtype}: {type(e).__name__}: {e}")
            continue
        if probe.dtype != x.dtype:
            tried.append(f"{param_dtype}: output {probe.dtype}")
            continue
        note = f"PyTorch params {str(param_dtype).split('.')[-1]}" \
            if param_dtype != torch.float32 and case.spec.affine else ""
        name = f"F.{case.spec.torch}"
        if case.op in ("bn", "brn"):
            name += "(training=False)" if case.phase == "inference" else "(training=True)"
        if case.phase != "backward":
            return (lambda: forward(x, weight, bias)), name, note
        xs = x.detach().requires_grad_()
        ps = [None if p is None else p.detach().requires_grad_() for p in (weight, bias)]
        y = forward(xs, *ps)
        inputs = [xs] + [p for p in ps if p is not None]
        dy = _tensor(torch, arrays["dy"]).reshape(case.shape)
        return (lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True),
                f"autograd.grad of {name}", note)
    raise RuntimeError("PyTorch rejected every parameter dtype: " + "; ".join(tried))


def import_torch():
    """torch, or None where it does not import."""
    try:
        import torch
    except Exception:   # ImportError, or a torch that fails to load its libraries
        return None
    return torch


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def run(device, case_list, dtype="float32", all_versions=False, warmup=10, reps=100, torch=None,
        copy_reps=20, seed=0, command=None, log=print):
    """Time ``case_list`` on ``device`` (see CupyDevice); return the results dict the reports take.

    ``torch``: the torch module, or None to skip PyTorch. A failing case is
    recorded in its row (``error``) and the run goes on.
    """
    dtype = numpy.dtype(dtype).name
    meta = {"benchmark": "norms", "dtype": dtype, "warmup": warmup, "reps": reps, "eps": EPS,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join([pathlib.Path(sys.executable).name] + sys.argv),
            "git": _git_head(), "python": platform.python_version(), "numpy": numpy.__version__,
            "timing": "median of per-rep CUDA-event times, L2 flushed before each rep, after warm-up calls; "
                      "wall_ms: host time per call over back-to-back calls",
            "min_bytes": "compulsory traffic: each input read once, each output written once "
                         "(formulas in cubn/bench/norms.py)"}
    meta.update(device.info())
    if torch is not None:
        meta.update(torch=torch.__version__, torch_cuda=getattr(torch.version, "cuda", None))
    torch_problem = "torch does not import" if torch is None else device.torch_problem(torch)
    meta["torch_skipped"] = torch_problem
    log(f"{meta['gpu']}: device-to-device copy ...")
    meta["copy_GBps"] = device.copy_bandwidth(copy_reps)
    meta["copy_bytes"] = device.copy_bytes
    log(f"copy bandwidth {meta['copy_GBps']:.0f} GB/s (read + write)")
    rows = []
    for case in case_list:
        rows += run_case(device, case, dtype, all_versions, warmup, reps,
                         None if torch_problem else torch, seed, log)
        device.release(None if torch_problem else torch)   # this case's buffers, before the next one's
    return {"meta": meta, "rows": [derive(r, meta["copy_GBps"]) for r in rows]}


def run_case(device, case, dtype, all_versions, warmup, reps, torch, seed, log):
    """The rows of one case: one per cubn version timed, each carrying the case's PyTorch figures."""
    base = {"op": case.op, "name": case.spec.name, "phase": case.phase, "shape": list(case.shape),
            "view": list(case.view), "groups": case.groups, "function": case.function,
            "min_bytes": min_bytes(case, dtype), "note": case.spec.note}
    try:
        arrays = make_arrays(case, dtype, device.xp, seed)
        args = kernel_args(case, arrays)
        want = bind(importlib.import_module("cubn.ref." + case.spec.family), case.function, args)()
    except Exception as e:   # a broken twin or too little memory: say so and go on
        return [dict(base, error=f"setup: {type(e).__name__}: {e}")]
    base.update(_torch_figures(device, case, arrays, torch, warmup, reps))
    try:
        module = device.kernels(case.spec.family)
        versions = versions_of(module, case.function) if all_versions else [None]
        default = default_version(module, case.function)
    except Exception as e:
        return [dict(base, error=f"{type(e).__name__}: {e}")]
    rows = []
    for version in versions:
        row = dict(base, version=default if version is None else version,
                   default=version is None or version == default)
        try:
            fn = bind(module, case.function, args, version)
            err = rel_err(fn(), want)
            row["cubn_rel_err"] = err if math.isfinite(err) else str(err)
            if not err <= CHECK_TOL[dtype]:
                row["error"] = f"output differs from the NumPy twin: relative error {err:.2e}"
            row["cubn_ms_reps"] = device.time_ms(fn, warmup, reps)
            row["cubn_ms"] = median(row["cubn_ms_reps"])
            row["cubn_wall_ms"] = device.wall_ms(fn, reps)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
        log(_progress(case, row))
    return rows


def _torch_figures(device, case, arrays, torch, warmup, reps):
    if torch is None:
        return {}
    try:
        fn, name, note = torch_op(case, arrays, torch)
        ms = device.time_ms(fn, warmup, reps)
        return {"torch_op": name, "torch_note": note, "torch_ms_reps": ms, "torch_ms": median(ms),
                "torch_wall_ms": device.wall_ms(fn, reps)}
    except Exception as e:
        return {"torch_error": f"{type(e).__name__}: {e}"}


def _progress(case, row):
    version = version_label(row)
    if "cubn_ms" not in row:
        return f"{case.label:28s} {version:>10s}  FAILED: {row.get('error')}"
    torch = f"  torch {row['torch_ms']:8.4f} ms" if "torch_ms" in row else ""
    bad = f"  CHECK: {row['error']}" if row.get("error") else ""
    return f"{case.label:28s} {version:>10s}  cubn {row['cubn_ms']:8.4f} ms{torch}{bad}"


def _git_head():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=pathlib.Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------
# Reports (pure: a results dict in, files out)
# ---------------------------------------------------------------------------
def derive(row, copy_GBps):
    """``row`` with the derived figures: GB/s against min_bytes, % of copy bandwidth, speedup."""
    row = dict(row)
    for who in ("cubn", "torch"):
        ms = row.get(f"{who}_ms")
        if ms:
            gbps = row["min_bytes"] / (ms * 1e-3) / 1e9
            row[f"{who}_GBps"] = gbps
            row[f"{who}_pct_copy"] = 100 * gbps / copy_GBps if copy_GBps else None
    if row.get("cubn_ms") and row.get("torch_ms"):
        row["speedup"] = row["torch_ms"] / row["cubn_ms"]
    return row


def report_stem(meta):
    """'norms-<gpu slug>', with '-float16' for float16 runs and '-quick' for --quick runs."""
    stem = f"norms-{slug(meta['gpu'])}"
    if meta.get("dtype", "float32") != "float32":
        stem += f"-{meta['dtype']}"
    return stem + ("-quick" if meta.get("quick") else "")


COLUMNS = ("op", "phase", "shape", "version", "min MB", "cubn ms", "cubn GB/s", "% copy",
           "PyTorch ms", "PyTorch GB/s", "speedup", "note")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def version_label(row):
    """'v2 *' for version 2 when it is the default, 'v1', 'default *' where the module names none, '-' if not run."""
    if "default" not in row:
        return "-"
    v = row.get("version")
    name = "default" if v is None else (f"v{v}" if isinstance(v, int) else str(v))
    return name + (" *" if row["default"] else "")


def table_rows(results):
    """The Markdown table's cells, one list per row, in COLUMNS order."""
    out = []
    for r in results["rows"]:
        version = version_label(r)
        notes = [n for n in (r.get("note"), r.get("torch_note")) if n]
        if r.get("error"):
            notes.append(f"cubn error: {r['error']}")
        if r.get("torch_error"):
            notes.append(f"PyTorch error: {r['torch_error']}")
        out.append([
            r["op"], r["phase"], "x".join(map(str, r["shape"])) + (f" G={r['groups']}" if r["op"] == "gn" else ""),
            version, _fmt(r["min_bytes"] / 1e6, ".2f"),
            _fmt(r.get("cubn_ms"), ".4f"), _fmt(r.get("cubn_GBps"), ".0f"), _fmt(r.get("cubn_pct_copy"), ".0f"),
            _fmt(r.get("torch_ms"), ".4f"), _fmt(r.get("torch_GBps"), ".0f"), _fmt(r.get("speedup"), ".2f"),
            "; ".join(notes).replace("|", "/").replace("\n", " "),
        ])
    return out


def markdown(results):
    """The Markdown report: what ran where, then one table row per timed cubn version."""
    m = results["meta"]
    lines = [
        f"# Normalization kernels: cubn vs PyTorch on {m['gpu']} ({m['dtype']})",
        "",
        f"- date {m.get('date')}, git {m.get('git')}, command `{m.get('command')}`",
        f"- driver {m.get('driver')}, CUDA driver API {m.get('cuda_driver_api')}, runtime {m.get('cuda_runtime')}, "
        f"CuPy {m.get('cupy')}, PyTorch {m.get('torch', 'not imported')}"
        f"{' (CUDA ' + str(m['torch_cuda']) + ')' if m.get('torch_cuda') else ''}, "
        f"NumPy {m.get('numpy')}, Python {m.get('python')}",
        f"- {m.get('sm_count')} SMs, L2 {_fmt((m.get('l2_bytes') or 0) / 2**20, '.0f')} MiB; "
        f"device-to-device copy {_fmt(m.get('copy_GBps'), '.0f')} GB/s (bytes read + written)",
        f"- times: {m.get('timing')}; {m.get('warmup')} warm-up calls, {m.get('reps')} reps",
    ]
    if m.get("torch_skipped"):
        lines.append(f"- PyTorch not timed: {m['torch_skipped']}")
    lines += [
        "",
        "min MB: the op's compulsory traffic (each input read once, each output written once); GB/s is "
        "min bytes / time for both columns, so a kernel that reads x twice shows at most ~67% of copy. "
        "% copy: cubn GB/s over the measured copy bandwidth. speedup: PyTorch ms / cubn ms (above 1: cubn "
        "is faster). `*`: the default version.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("op", "phase", "shape", "version", "note") else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_reports(results, out_dir, log=print):
    """Write <stem>.json, <stem>.md and (where matplotlib imports) <stem>.png under ``out_dir``; return the paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report_stem(results["meta"])
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    text = json.dumps(results, indent=1, allow_nan=False, default=_json_default)
    # one line per list of numbers (the per-rep times), not one line per number
    text = re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    paths[0].write_text(text + "\n")
    paths[1].write_text(markdown(results))
    png = write_chart(results, stem.with_suffix(".png"))
    if png is None:
        log("matplotlib does not import: no PNG chart written (pip install matplotlib)")
    else:
        paths.append(png)
    return paths


def _json_default(v):
    if isinstance(v, numpy.generic):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def write_chart(results, path):
    """A horizontal bar chart of achieved GB/s (cubn default version vs PyTorch) per case; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    rows = [r for r in results["rows"] if r.get("default") and r.get("cubn_GBps")]
    labels = [f"{r['op']} {r['phase']} {'x'.join(map(str, r['shape']))}" for r in rows]
    y = numpy.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.28 * max(len(rows), 1)))
    ax.barh(y - 0.2, [r["cubn_GBps"] for r in rows], height=0.4, label="cubn")
    ax.barh(y + 0.2, [r.get("torch_GBps") or 0 for r in rows], height=0.4, label="PyTorch")
    copy = results["meta"].get("copy_GBps")
    if copy:
        ax.axvline(copy, color="k", linestyle="--", linewidth=1, label=f"copy {copy:.0f} GB/s")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s against the minimum bytes")
    ax.set_title(f"{results['meta']['gpu']} ({results['meta']['dtype']})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pathlib.Path(path)
