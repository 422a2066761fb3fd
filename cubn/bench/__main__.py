"""``python -m cubn.bench norms|train``: time the normalization kernels, or whole training steps, against PyTorch.

    python -m cubn.bench norms                          every case, float32, default kernel versions
    python -m cubn.bench norms --ops bn --versions      BatchNorm only, every kernel version
    python -m cubn.bench norms --quick --dtype float16  fewer reps; reports named ...-float16-quick

Reports go to --out (default bench/results): norms-<gpu slug>[-float16][-quick].{json,md,png}.
Exit status: 0 when every cubn case ran and matched its NumPy twin, 1 when one failed
(its row says why; the reports are still written), 2 without a GPU or on bad arguments.

    python -m cubn.bench train                          ResNet-20 training steps/s and memory, cubn vs PyTorch
    python -m cubn.bench train --device cpu --quick     the same on the CPU (NumPy path), a few steps

``train`` also runs on the CPU (its options and reports: cubn/bench/train.py); exit status 0, or 2 on
bad arguments or when ``--device cuda`` finds no GPU.

    python -m cubn.bench cpu                            the CPU path vs PyTorch CPU: main-job step, norms, conv (cubn/bench/cpu.py)
    mpiexec -n 2 python -m mpi4py -m cubn.bench dist    SyncBatchNorm's cost per layer and per step (cubn/bench/dist.py)
"""
import argparse
import sys

from .. import backend
from . import norms, train

QUICK = dict(warmup=3, reps=10, copy_reps=5, copy_bytes=256 << 20)
FULL = dict(warmup=10, reps=100, copy_reps=20, copy_bytes=1 << 30)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m cubn.bench", description="Benchmarks of cubn's kernels.")
    sub = p.add_subparsers(dest="benchmark", required=True)
    n = sub.add_parser("norms", help="normalization kernels vs PyTorch (see cubn/bench/norms.py)")
    n.add_argument("--out", default="bench/results", help="folder for the reports (default bench/results)")
    n.add_argument("--quick", action="store_true", help="few reps: a smoke run, reports named ...-quick")
    n.add_argument("--ops", nargs="+", choices=list(norms.OPS), default=list(norms.OPS),
                   help="which ops (default all): " + ", ".join(f"{k} {v.name}" for k, v in norms.OPS.items()))
    n.add_argument("--dtype", choices=norms.DTYPES, default="float32", help="storage dtype of x, y, dy, dx")
    n.add_argument("--versions", action="store_true", help="time every kernel version, not only the defaults")
    n.add_argument("--reps", type=int, help="timed reps per case (default 100, 10 with --quick)")
    n.add_argument("--warmup", type=int, help="warm-up calls per case (default 10, 3 with --quick)")
    n.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    train.add_arguments(sub.add_parser("train", help="ResNet-20 training steps, cubn vs PyTorch (cubn/bench/train.py)"))
    sub.add_parser("cpu", help="the CPU path vs PyTorch CPU, in one process (cubn/bench/cpu.py)")
    sub.add_parser("dist", help="under mpiexec: SyncBatchNorm's overhead per layer and per step (cubn/bench/dist.py)")
    args = p.parse_args(argv)
    if args.benchmark == "train":
        return args
    for name in ("reps", "warmup"):
        if getattr(args, name) is not None and getattr(args, name) < (1 if name == "reps" else 0):
            p.error(f"--{name} must be {'>= 1' if name == 'reps' else '>= 0'}, got {getattr(args, name)}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dist"]:
        from . import dist
        return dist.main(argv[1:])
    if argv[:1] == ["cpu"]:
        from . import cpu
        return cpu.main(argv[1:])
    args = parse(argv)
    if args.benchmark == "train":
        return train.main(args, argv)
    if not backend.has_gpu():
        print("cubn.bench: no CUDA device answers through CuPy, and this benchmark times GPU kernels.\n"
              "Run it on a machine with an NVIDIA GPU after `pip install \".[cuda12]\"` (or \".[cuda13]\").",
              file=sys.stderr)
        return 2
    settings = dict(QUICK if args.quick else FULL)
    settings.update({k: getattr(args, k) for k in ("reps", "warmup") if getattr(args, k) is not None})
    from . import CupyDevice
    device = CupyDevice(copy_bytes=settings.pop("copy_bytes"))
    torch = None if args.no_torch else norms.import_torch()
    results = norms.run(device, norms.cases(args.ops), dtype=args.dtype, all_versions=args.versions,
                        torch=torch, command="python -m cubn.bench " + " ".join(argv), **settings)
    results["meta"]["quick"] = args.quick
    if args.no_torch:
        results["meta"]["torch_skipped"] = "--no-torch"
    for path in norms.write_reports(results, args.out):
        print(f"wrote {path}")
    failed = [r for r in results["rows"] if r.get("error")]
    for r in failed:
        print(f"FAILED {r['op']} {r['phase']} {r['shape']} {r.get('version')}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
