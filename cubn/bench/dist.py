"""``mpiexec -n R python -m mpi4py -m cubn.bench dist``: what synchronizing BatchNorm costs, per layer and per step.

Every rank runs the same cases on its own slice; rank 0 writes the reports. Timings are interleaved
(one SyncBatchNorm forward+backward, then one BatchNorm2d forward+backward on the same slice, and so
on), so a noisy neighbour hits both sides alike; each figure is the median over ``--reps`` with the
range (min..max) beside it.

* per layer: training forward + backward of one layer on a ResNet-20-sized slice (float32, NumPy path),
  SyncBatchNorm vs BatchNorm2d; the overhead is the difference of the medians, which is the layer's
  two collectives (an all_gather of (3, C) float64, an all_reduce of (2, C) float64, each after a
  layout check) plus the float64 merge;
* the collectives alone: one ``all_gather`` of a (3, C) float64 array, with and without the layout check;
* per step: one SGD step of the README's small CNN with SyncBatchNorm in DistributedDataParallel on a
  global batch of 64 split over the ranks (with R = 1 that is the single-process step).

Each rank is one process with one NumPy thread unless the environment says otherwise (OMP_NUM_THREADS);
the report records the thread count and the number of cores. Reports: <out>/dist-cpu-<R>ranks.{json,md}.
"""
import argparse
import json
import os
import time

import numpy

from .. import distributed, models, nn, optim
from ..nn import functional as F
from ..tensor import tensor
from .train import cpu_name

SLICES = [(16, 16, 32, 32), (16, 32, 16, 16), (16, 64, 8, 8)]   # ResNet-20's three stages, 16 samples per rank


def _stats(seconds):
    s = numpy.asarray(seconds) * 1e3
    return {"median_ms": float(numpy.median(s)), "min_ms": float(s.min()), "max_ms": float(s.max())}


def _timed(fn):
    distributed.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def layer_cases(reps, rng):
    rows = []
    for shape in SLICES:
        x = rng.standard_normal(shape).astype(numpy.float32)
        dy = rng.standard_normal(shape).astype(numpy.float32)
        layers = {"sync": nn.SyncBatchNorm(shape[1]), "local": nn.BatchNorm2d(shape[1])}

        def step(layer):
            t = tensor(x, requires_grad=True)
            layer(t).backward(dy)

        times = {k: [] for k in layers}
        for _ in range(reps):
            for name, layer in layers.items():
                times[name].append(_timed(lambda: step(layer)))
        sync, local = _stats(times["sync"]), _stats(times["local"])
        rows.append({"shape": list(shape), "sync": sync, "local": local,
                     "overhead_ms": sync["median_ms"] - local["median_ms"]})
    return rows


def collective_cases(reps):
    rows = []
    for C in (16, 64, 256):
        part = numpy.zeros((3, C))
        for check in (True, False):
            distributed.CHECK_LAYOUTS = check
            times = [_timed(lambda: distributed.all_gather(part)) for _ in range(reps)]
            rows.append({"channels": C, "layout_check": check, **_stats(times)})
    distributed.CHECK_LAYOUTS = True
    return rows


def step_case(reps, rng):
    world = distributed.world_size()
    per_rank = 64 // world
    model = nn.SyncBatchNorm.convert_sync_batchnorm(models.create("cnn", norm="bn", in_channels=1, num_classes=10,
                                                                  image_size=[8, 8]))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    x = rng.standard_normal((per_rank, 1, 8, 8)).astype(numpy.float32)
    y = rng.integers(0, 10, per_rank)

    def step():
        loss = F.cross_entropy(ddp(tensor(x)), tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    return {"global_batch": 64, "per_rank": per_rank, **_stats([_timed(step) for _ in range(reps)])}


def markdown(report):
    m = report["meta"]
    lines = [f"# SyncBatchNorm overhead, {m['ranks']} ranks on {m['cpu']} ({m['cores']} cores)", "",
             f"`{m['command']}`; {m['threads']} NumPy thread(s) per rank; median (min..max) over {m['reps']} reps, "
             "interleaved.", "", "| slice per rank (N, C, H, W) | SyncBatchNorm fwd+bwd ms | BatchNorm2d fwd+bwd ms "
             "| overhead ms |", "|---|---|---|---|"]
    for r in report["layers"]:
        s, b = r["sync"], r["local"]
        lines.append(f"| {tuple(r['shape'])} | {s['median_ms']:.3f} ({s['min_ms']:.3f}..{s['max_ms']:.3f}) | "
                     f"{b['median_ms']:.3f} ({b['min_ms']:.3f}..{b['max_ms']:.3f}) | {r['overhead_ms']:.3f} |")
    lines += ["", "| all_gather of (3, C) float64 | layout check | ms |", "|---|---|---|"]
    for r in report["collectives"]:
        lines.append(f"| C = {r['channels']} | {'on' if r['layout_check'] else 'off'} | "
                     f"{r['median_ms']:.3f} ({r['min_ms']:.3f}..{r['max_ms']:.3f}) |")
    s = report["step"]
    lines += ["", f"One SGD step of the small CNN (SyncBatchNorm + DistributedDataParallel), global batch 64 "
              f"({s['per_rank']} per rank): {s['median_ms']:.2f} ms ({s['min_ms']:.2f}..{s['max_ms']:.2f})", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cubn.bench dist", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=50, help="timed reps per case (default 50)")
    p.add_argument("--out", default="bench/results", help="folder for the reports (default bench/results)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    distributed.init("auto")
    rng = numpy.random.default_rng(distributed.rank())
    report = {"layers": layer_cases(args.reps, rng), "collectives": collective_cases(args.reps),
              "step": step_case(args.reps, rng)}
    ranks = distributed.world_size()
    report["meta"] = {"ranks": ranks, "backend": distributed.init("auto"), "reps": args.reps,
                      "threads": os.environ.get("OMP_NUM_THREADS", "library default"),
                      "cores": os.cpu_count(), "cpu": cpu_name(),
                      "command": f"mpiexec -n {ranks} python -m mpi4py -m cubn.bench dist --reps {args.reps}"}
    if distributed.rank() != 0:
        return 0
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"dist-cpu-{ranks}ranks")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    print(f"wrote {base}.json, {base}.md")
    return 0
