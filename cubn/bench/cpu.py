"""``python -m cubn.bench cpu``: the CPU path (NumPy) against PyTorch CPU, in one process, interleaved.

    python -m cubn.bench cpu                  every case, at 1 thread and at the default thread count
    python -m cubn.bench cpu --quick          fewer reps (a smoke run; reports named ...-quick)
    python -m cubn.bench cpu --cases step bn  some groups only
    python -m cubn.bench cpu --busy 1         the same with 1 busy-looping process beside it (a loaded machine)

What is timed
-------------
Each case is one unit of work written twice, in cubn and in PyTorch, on the same arrays:

* ``step``: one training step of the README's main job (``small_cnn`` with BatchNorm on the 8x8
  digits, batch 64: forward, cross-entropy, backward, SGD with momentum and weight decay), both
  models starting from the same weights (cubn's, loaded into the PyTorch twin);
* ``eval``: an eval-mode pass of the same model over the 360 test digits (no gradients);
* the norms' training forward + backward (BatchNorm2d, LayerNorm, GroupNorm, InstanceNorm, RMSNorm,
  Batch Renorm) on the small CNN's shapes and on larger ones;
* ``conv``: Conv2d forward + backward of the main job's four convolutions; ``pool``: MaxPool2d(2)
  forward + backward;
* ``tape``: 100 elementwise ops on a 4x4 tensor and their backward, so per op it is what the
  autodiff engine costs beyond the arithmetic.

How: ``--warmup`` untimed reps, then ``--reps`` rounds; each round runs cubn once and PyTorch once,
in alternating order, so a noisy neighbour hits both alike. Each figure is the median with the
range (min..max) beside it, and the ratio is cubn's median over PyTorch's, with the quartiles of the
per-round ratios beside it (how much the ratio itself moves). Everything runs twice:
at 1 thread on both sides (cubn through ``cubn.set_num_threads``, i.e. its BLAS; PyTorch through
``torch.set_num_threads``), the like-for-like figure, and at each library's default thread count.

Like ``cubn train``, the run first calls ``cubn.cpu.keep_freed_memory()`` (the process's malloc reuses
large freed blocks; PyTorch, in the same process, gets it too).

Also reported: where the time of cubn's main-job step goes (each autodiff op's forward and
backward timed on its own, ``cubn.bench.train.op_profile``), at 1 thread.

``--busy N`` starts N Python processes that spin for the whole run, so the figures show what threads
cost when the cores are not all free (a shared CI runner, a laptop doing something else).

Targets (issue 15): the step at <= 1.2x PyTorch, each norm's forward + backward at <= 1.5x, at 1
thread; the Markdown marks each case, and ``docs/cpu.md`` says why the ones that miss do.

Without PyTorch the cubn half runs alone and the report says so. Reports:
``cpu-<cpu slug>[-busyN][-twins][-quick]`` ``.json`` and ``.md`` under ``--out`` (default bench/results);
``-twins`` when the norms ran on the NumPy twins (Numba not installed, or ``CUBN_KERNELS=ref`` to
compare the two CPU paths) rather than on the compiled loops of ``cubn/jit``.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy

from .. import cpu, data, models, nn, optim
from .. import random as cubn_random
from ..nn import functional as F
from ..creation import from_numpy
from ..ops.norm import cpu_norm_path
from ..tensor import no_grad, tensor
from . import slug
from .train import _git_head, cpu_name, import_torch, op_profile

LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.05, 0.9, 5e-4, 64
GROUPS = ("step", "eval", "bn", "ln", "gn", "in", "rms", "brn", "conv", "pool", "tape")
TARGET = {"step": 1.2, "bn": 1.5, "ln": 1.5, "gn": 1.5, "in": 1.5, "rms": 1.5, "brn": 1.5}
FULL = dict(warmup=5, reps=30)
QUICK = dict(warmup=1, reps=3)


# ---------------------------------------------------------------------------
# The cases: each gives a cubn callable and a PyTorch callable doing the same work
# ---------------------------------------------------------------------------
def _digits():
    (x, y), (xt, yt) = data.load_digits("train"), data.load_digits("test")
    mean, std = x.mean(), x.std()
    return ((x - mean) / std).astype(numpy.float32), y, ((xt - mean) / std).astype(numpy.float32), yt


def _torch_small_cnn(torch, cubn_model):
    """small_cnn in PyTorch, layer for layer, with cubn_model's weights and buffers."""
    tnn, layers, channels = torch.nn, [], 1
    for item in (32, 32, "M", 64, 64, "M"):
        if item == "M":
            layers.append(tnn.MaxPool2d(2))
            continue
        layers += [tnn.Conv2d(channels, item, 3, padding=1, bias=False), tnn.BatchNorm2d(item), tnn.ReLU()]
        channels = item
    model = tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(channels, 10))
    state = cubn_model.state_dict()
    model.load_state_dict({k: torch.from_numpy(numpy.array(state[k])).to(v.dtype) for k, v in model.state_dict().items()})
    return model


def step_cases(torch):
    x, y, xt, yt = _digits()
    batches = [(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(4)]
    cubn_random.manual_seed(0)
    model = models.small_cnn(1, 10, "bn")
    twin = _torch_small_cnn(torch, model) if torch else None
    cases = []

    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    cb = [(tensor(a), tensor(b)) for a, b in batches]
    it = [0]

    def cubn_step():
        model.train()
        xb, yb = cb[it[0] % 4]
        it[0] += 1
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def cubn_eval():
        model.eval()
        with no_grad():
            model(from_numpy(xt)).numpy()

    torch_step = torch_eval = None
    if torch:
        topt = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        tb = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in batches]
        tt = torch.from_numpy(xt)
        jt = [0]

        def torch_step():
            twin.train()
            xb, yb = tb[jt[0] % 4]
            jt[0] += 1
            loss = torch.nn.functional.cross_entropy(twin(xb), yb)
            topt.zero_grad(set_to_none=True)
            loss.backward()
            topt.step()

        def torch_eval():
            twin.eval()
            with torch.no_grad():
                twin(tt).numpy()

    cases.append(("step", f"small_cnn BN training step, batch {BATCH}", cubn_step, torch_step))
    cases.append(("eval", f"small_cnn eval pass, {len(xt)} images", cubn_eval, torch_eval))
    return cases, (cubn_step, model)


# (group, label, shape, cubn layer factory, torch layer factory)
NORMS = [
    ("bn", "BatchNorm2d", (64, 32, 8, 8), lambda: nn.BatchNorm2d(32), lambda t: t.nn.BatchNorm2d(32)),
    ("bn", "BatchNorm2d", (64, 64, 4, 4), lambda: nn.BatchNorm2d(64), lambda t: t.nn.BatchNorm2d(64)),
    ("bn", "BatchNorm2d", (32, 64, 32, 32), lambda: nn.BatchNorm2d(64), lambda t: t.nn.BatchNorm2d(64)),
    ("ln", "LayerNorm(768)", (64, 768), lambda: nn.LayerNorm(768), lambda t: t.nn.LayerNorm(768)),
    ("ln", "LayerNorm(768)", (2048, 768), lambda: nn.LayerNorm(768), lambda t: t.nn.LayerNorm(768)),
    ("gn", "GroupNorm(8, 32)", (64, 32, 8, 8), lambda: nn.GroupNorm(8, 32), lambda t: t.nn.GroupNorm(8, 32)),
    ("gn", "GroupNorm(32, 64)", (32, 64, 32, 32), lambda: nn.GroupNorm(32, 64), lambda t: t.nn.GroupNorm(32, 64)),
    ("in", "InstanceNorm2d(32, affine)", (64, 32, 8, 8), lambda: nn.InstanceNorm2d(32, affine=True),
     lambda t: t.nn.InstanceNorm2d(32, affine=True)),
    ("in", "InstanceNorm2d(64, affine)", (32, 64, 32, 32), lambda: nn.InstanceNorm2d(64, affine=True),
     lambda t: t.nn.InstanceNorm2d(64, affine=True)),
    ("rms", "RMSNorm(768)", (64, 768), lambda: nn.RMSNorm(768), lambda t: t.nn.RMSNorm(768)),
    ("rms", "RMSNorm(768)", (2048, 768), lambda: nn.RMSNorm(768), lambda t: t.nn.RMSNorm(768)),
    ("brn", "BatchRenorm2d", (64, 32, 8, 8), lambda: nn.BatchRenorm2d(32), None),
    ("brn", "BatchRenorm2d", (32, 64, 32, 32), lambda: nn.BatchRenorm2d(64), None),
]
# the main job's four convolutions (3x3, padding 1, no bias) on a batch of 64
CONVS = [(1, 32, 8), (32, 32, 8), (32, 64, 4), (64, 64, 4)]
POOLS = [(64, 32, 8, 8), (64, 64, 4, 4), (32, 64, 32, 32)]


def _fwd_bwd(layer, x, dy):
    def run():
        t = from_numpy(x).requires_grad_()     # as torch.from_numpy below: no copy on either side
        layer(t).backward(dy)
    return run


def _torch_fwd_bwd(torch, layer, x, dy):
    dyt = torch.from_numpy(dy)

    def run():
        t = torch.from_numpy(x).requires_grad_()
        layer(t).backward(dyt)
    return run


def layer_cases(torch, groups, rng):
    cases = []
    for group, label, shape, make, make_torch in NORMS:
        if group in groups:
            x, dy = (rng.standard_normal(shape).astype(numpy.float32) for _ in range(2))
            layer, twin = make(), (make_torch(torch) if torch and make_torch else None)
            cases.append((group, f"{label} fwd+bwd {shape}", _fwd_bwd(layer, x, dy),
                          _torch_fwd_bwd(torch, twin, x, dy) if twin else None))
    if "conv" in groups:
        for cin, cout, size in CONVS:
            x = rng.standard_normal((BATCH, cin, size, size)).astype(numpy.float32)
            dy = rng.standard_normal((BATCH, cout, size, size)).astype(numpy.float32)
            conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            twin = None
            if torch:
                twin = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
                with torch.no_grad():
                    twin.weight.copy_(torch.from_numpy(conv.weight.numpy()))
            weights = [conv.weight] + ([twin.weight] if twin else [])
            cases.append(("conv", f"Conv2d {cin}->{cout} 3x3 fwd+bwd {x.shape}",
                          _with_grads_cleared(_fwd_bwd(conv, x, dy), weights),
                          _torch_fwd_bwd(torch, twin, x, dy) if twin else None))
    if "pool" in groups:
        for shape in POOLS:
            x = rng.standard_normal(shape).astype(numpy.float32)
            dy = rng.standard_normal(shape[:2] + (shape[2] // 2, shape[3] // 2)).astype(numpy.float32)
            cases.append(("pool", f"MaxPool2d(2) fwd+bwd {shape}", _fwd_bwd(nn.MaxPool2d(2), x, dy),
                          _torch_fwd_bwd(torch, torch.nn.MaxPool2d(2), x, dy) if torch else None))
    if "tape" in groups:
        cases.append(("tape", "100 elementwise ops + backward on (4, 4), per op", *_tape(torch)))
    return cases


def _with_grads_cleared(run, params):
    """``run`` that first drops the gradients the previous call left (they would accumulate)."""
    def cleared():
        for p in params:
            p.grad = None
        run()
    return cleared


TAPE_OPS = 100


def _tape(torch):
    a = numpy.full((4, 4), 0.5, numpy.float32)

    def cubn_run():
        t = from_numpy(a).requires_grad_()
        y = t
        for _ in range(TAPE_OPS // 2):
            y = y * 1.0001 + 0.001
        y.sum().backward()

    if not torch:
        return cubn_run, None

    def torch_run():
        t = torch.from_numpy(a).requires_grad_()
        y = t
        for _ in range(TAPE_OPS // 2):
            y = y * 1.0001 + 0.001
        y.sum().backward()
    return cubn_run, torch_run


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def _stats(ms):
    ms = numpy.asarray(ms)
    return {"median_ms": float(numpy.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max()), "reps": len(ms)}


def _time(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(cubn_fn, torch_fn, warmup, reps):
    """(cubn stats, torch stats or None, per-round ratios or None): rounds of one call each, the order
    alternating per round."""
    for _ in range(warmup):
        cubn_fn()
        if torch_fn:
            torch_fn()
    times = {"cubn": [], "torch": []}
    for r in range(reps):
        order = [("cubn", cubn_fn), ("torch", torch_fn)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            if fn is not None:
                times[name].append(_time(fn))
    return _stats(times["cubn"]), (_stats(times["torch"]) if torch_fn else None), _round_ratios(times)


def _round_ratios(times):
    """Median and quartiles of cubn/PyTorch per round (the two ran back to back in each), or None."""
    if not times["torch"]:
        return None
    q25, q50, q75 = numpy.percentile(numpy.divide(times["cubn"], times["torch"]), [25, 50, 75])
    return {"median": float(q50), "p25": float(q25), "p75": float(q75)}


def set_threads(torch, n):
    """Both libraries at ``n`` threads; n=None restores each library's default (saved at start)."""
    cpu.set_num_threads(n or DEFAULT_THREADS["cubn"])
    if torch:
        torch.set_num_threads(n or DEFAULT_THREADS["torch"])


DEFAULT_THREADS = {}


def run(groups=GROUPS, warmup=FULL["warmup"], reps=FULL["reps"], torch="import", profile_steps=10, log=print):
    why = None
    malloc_tuned = cpu.keep_freed_memory()     # as ``cubn train`` runs; both libraries get it (cubn/cpu.py)
    if torch == "import":
        torch, why = import_torch()
    DEFAULT_THREADS.update(cubn=cpu.get_num_threads(), torch=torch.get_num_threads() if torch else None)
    rng = numpy.random.default_rng(0)
    cases, (main_step, _) = step_cases(torch)
    cases = [c for c in cases if c[0] in groups] + layer_cases(torch, groups, rng)
    settings = [("1 thread", 1), ("default threads", None)]
    rows = []
    try:
        for group, label, cubn_fn, torch_fn in cases:
            row = {"group": group, "case": label}
            for key, n in settings:
                set_threads(torch, n)
                c, t, per_round = interleaved(cubn_fn, torch_fn, warmup, reps)
                row[key] = {"cubn": c, "torch": t, "ratio": c["median_ms"] / t["median_ms"] if t else None,
                            "round_ratio": per_round,
                            "threads": {"cubn": cpu.get_num_threads(),
                                        "torch": torch.get_num_threads() if torch else None}}
            if group == "tape":
                for key, _ in settings:
                    row[key]["per_op_us"] = {k: v["median_ms"] * 1e3 / TAPE_OPS
                                             for k, v in row[key].items() if k in ("cubn", "torch") and v}
            rows.append(row)
            one = row["1 thread"]
            log(f"{label:60s} cubn {one['cubn']['median_ms']:8.3f} ms"
                + (f"  torch {one['torch']['median_ms']:8.3f} ms  x{one['ratio']:.2f}" if one["torch"] else ""))
        set_threads(torch, 1)

        class _NoSync:                          # op_profile's runner interface, for the CPU: nothing to wait for
            def sync(self): pass
            def sample_memory(self): pass
            def loss(self, i): return _Loss()
            def backward(self, loss): pass
            def step(self): main_step()

        class _Loss:
            pass

        profile = None
        if "step" in groups:
            for _ in range(warmup):
                main_step()
            profile = op_profile(_NoSync(), profile_steps)
    finally:
        set_threads(torch, None)
    meta = {"benchmark": "cpu", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "torch": torch.__version__ if torch else None, "torch_missing": why,
            "cpu_norms": cpu_norm_path(), "default_threads": dict(DEFAULT_THREADS), "keep_freed_memory": malloc_tuned, "warmup": warmup, "reps": reps, "git": _git_head(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return {"meta": meta, "rows": rows, "profile": profile}


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------
def _cell(s):
    return "-" if s is None else f"{s['median_ms']:.3f} ({s['min_ms']:.3f}..{s['max_ms']:.3f})"


def markdown(results):
    m, rows = results["meta"], results["rows"]
    d = m["default_threads"]
    lines = [f"# cubn CPU path vs PyTorch CPU on {m['cpu']} ({m['cpu_count']} cores)", "",
             f"`{m.get('command', 'python -m cubn.bench cpu')}` at {m['date']} (git {m['git']}); NumPy {m['numpy']}, "
             f"PyTorch {m['torch'] or 'not installed: ' + str(m['torch_missing'])}; load average at the end "
             f"{m['load_average']}. Median (min..max) ms over {m['reps']} interleaved rounds after {m['warmup']} "
             f"warm-up; ratio = cubn median / PyTorch median, with the quartiles of the per-round ratios (each round "
             f"times both, back to back) in brackets. Default threads: cubn (BLAS) {d['cubn']}, PyTorch {d['torch']}. "
             f"cubn.cpu.keep_freed_memory() in effect for both: {m.get('keep_freed_memory')}. cubn's norms ran "
             + ("on the compiled loops (cubn/jit, Numba)." if m.get("cpu_norms") == "loops" else
                "on the NumPy twins (cubn/ref: no Numba, or CUBN_KERNELS=ref)." if m.get("cpu_norms") == "twins" else
                "on the CUDA kernels, emulated (CUBN_KERNELS=emulate)."), "",
             f"{m['busy']} busy-looping processes ran beside it." if m.get("busy") else "The machine was otherwise idle "
             "(as far as this process can tell: see the load average).", "",
             "Target (1 thread): the step <= 1.2x, each norm <= 1.5x; why a case misses it: docs/cpu.md.", "",
             "| case | cubn 1 thread | PyTorch 1 thread | ratio | target | cubn default | PyTorch default | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        one, default = r["1 thread"], r["default threads"]
        ratio = [f"{x['ratio']:.2f} ({x['round_ratio']['p25']:.2f}..{x['round_ratio']['p75']:.2f})"
                 if x["ratio"] else "-" for x in (one, default)]
        target = TARGET.get(r["group"])
        verdict = "-" if target is None or not one["ratio"] else (
            f"<= {target}: " + ("met" if one["ratio"] <= target else "**missed**"))
        lines.append(f"| {r['case']} | {_cell(one['cubn'])} | {_cell(one['torch'])} | **{ratio[0]}** | {verdict} | "
                     f"{_cell(default['cubn'])} | {_cell(default['torch'])} | {ratio[1]} |")
    tape = [r for r in rows if r["group"] == "tape"]
    if tape:
        per = tape[0]["1 thread"]["per_op_us"]
        lines += ["", "Tape overhead per elementwise op (forward + backward, 1 thread): "
                  + ", ".join(f"{k} {v:.1f} us" for k, v in per.items())]
    p = results.get("profile")
    if p:
        lines += ["", f"## Where the time of cubn's main-job step goes (1 thread, {p['steps']} steps)", "",
                  f"Step {p['step_ms']:.2f} ms with every op timed on its own; the ops add up to {p['ops_ms']:.2f} ms, "
                  "the rest is Python between ops (the loss, the optimizer's loop over parameters).", "",
                  "| op | phase | ms per step | calls | share |", "|---|---|---|---|---|"]
        for r in p["rows"][:15]:
            lines.append(f"| {r['op']} | {r['phase']} | {r['ms_per_step']:.3f} | {r['calls_per_step']:.0f} | "
                         f"{100 * r['share']:.1f}% |")
    return "\n".join(lines) + "\n"


def write_reports(results, out_dir, quick=False):
    os.makedirs(out_dir, exist_ok=True)
    busy = results["meta"].get("busy")
    base = os.path.join(out_dir, f"cpu-{slug(results['meta']['cpu'])}" + (f"-busy{busy}" if busy else "")
                        + ("-twins" if results["meta"].get("cpu_norms") == "twins" else "") + ("-quick" if quick else ""))
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(results))
    return [base + ".json", base + ".md"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cubn.bench cpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="folder for the reports (default bench/results)")
    p.add_argument("--quick", action="store_true", help="few reps: a smoke run, reports named ...-quick")
    p.add_argument("--cases", nargs="+", choices=GROUPS, default=list(GROUPS), help="which groups (default all)")
    p.add_argument("--reps", type=int, help=f"timed rounds per case (default {FULL['reps']}, {QUICK['reps']} quick)")
    p.add_argument("--no-torch", action="store_true", help="time cubn alone")
    p.add_argument("--busy", type=int, default=0, metavar="N", help="run N busy-looping processes beside it")
    args = p.parse_args(argv)
    if args.busy < 0:
        p.error(f"--busy must be >= 0, got {args.busy}")
    settings = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        if args.reps < 1:
            p.error(f"--reps must be >= 1, got {args.reps}")
        settings["reps"] = args.reps
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        results = run(args.cases, torch=None if args.no_torch else "import", **settings)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    results["meta"]["busy"] = args.busy
    if args.no_torch:
        results["meta"]["torch_missing"] = "--no-torch"
    results["meta"]["command"] = " ".join(["python -m cubn.bench cpu", *(sys.argv[2:] if argv is None else argv)])
    for path in write_reports(results, args.out, args.quick):
        print(f"wrote {path}")
    return 0
