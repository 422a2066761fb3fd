"""Run one kernel-API function, one version, on the CPU emulator, and compare it with its NumPy twin.

    python -m cubn.emulate batchnorm_forward --version 1 --shape 4 3 37 --dtype float32
    python -m cubn.emulate rownorm_backward --version 2 --shape 2 6 50 --groups 3
    CUBN_EMULATE_SCHEDULES=forward python -m cubn.emulate rmsnorm_forward --shape 3 40   # printf output once

Inputs are random (x = 1.5 + randn, gamma and beta near 1, dy = randn); a backward function gets the
statistics its forward twin returns. It prints each result's shape, dtype and largest difference from
``cubn.ref`` in float64. kernels/README.md shows how to add a printf to a kernel or step into one in gdb.
"""
import argparse
import importlib
import os
import sys

import numpy

MODULES = {"batchnorm": ("batchnorm_forward", "batchnorm_backward", "batchnorm_inference",
                         "batchnorm_inference_backward"),
           "batchrenorm": ("batchrenorm_forward", "batchrenorm_backward"),
           "rownorm": ("rownorm_forward", "rownorm_backward"),
           "rmsnorm": ("rmsnorm_forward", "rmsnorm_backward")}
EPS = 1e-5


def arguments(fn, shape, dtype, groups, seed=0):
    """The kernel-API arguments of ``fn`` on random inputs of ``shape`` (NumPy twins give the statistics)."""
    from cubn.ref import batchnorm, batchrenorm, rmsnorm, rownorm
    from cubn.ref.common import acc_dtype
    rng = numpy.random.default_rng(seed)
    acc = acc_dtype(dtype)
    x = (1.5 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[1]
    gamma, beta = (rng.uniform(0.5, 1.5, channels).astype(acc) for _ in range(2))
    if fn.startswith("rmsnorm"):
        if fn == "rmsnorm_forward":
            return x, gamma, EPS
        return dy, x, gamma, rmsnorm.rmsnorm_forward(x, gamma, EPS)[1]
    if fn.startswith("rownorm"):
        if fn == "rownorm_forward":
            return x, gamma, beta, groups, EPS
        _, mean, rstd = rownorm.rownorm_forward(x, gamma, beta, groups, EPS)
        return dy, x, gamma, mean, rstd, groups
    running_mean = (x.mean(axis=(0, 2)) + rng.normal(0, 0.3, channels)).astype(acc)
    running_var = (x.var(axis=(0, 2)) * rng.uniform(0.5, 2, channels)).astype(acc)
    if fn == "batchnorm_forward":
        return x, gamma, beta, EPS
    if fn == "batchnorm_backward":
        _, mean, _, rstd = batchnorm.batchnorm_forward(x, gamma, beta, EPS)
        return dy, x, gamma, mean, rstd
    if fn == "batchnorm_inference":
        return x, gamma, beta, running_mean, running_var, EPS
    if fn == "batchnorm_inference_backward":
        return dy, x, gamma, running_mean, running_var, EPS
    running_std = numpy.sqrt(running_var + EPS).astype(acc)
    if fn == "batchrenorm_forward":
        return x, gamma, beta, running_mean, running_std, 1.5, 0.5, EPS
    _, mean, _, rstd, r, d = batchrenorm.batchrenorm_forward(x, gamma, beta, running_mean, running_std, 1.5, 0.5, EPS)
    return dy, x, gamma, mean, rstd, r, d


def main(argv=None):
    functions = {fn: module for module, fns in MODULES.items() for fn in fns}
    parser = argparse.ArgumentParser(prog="python -m cubn.emulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("function", choices=sorted(functions))
    parser.add_argument("--version", type=int, default=None, help="kernel version (default: the library's)")
    parser.add_argument("--shape", type=int, nargs="+", default=None,
                        help="(N, C, S) for batchnorm/batchrenorm/rownorm, (R, K) for rmsnorm")
    parser.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float32")
    parser.add_argument("--groups", type=int, default=1, help="rownorm: groups (1 LayerNorm-like, C instance)")
    args = parser.parse_args(argv)
    os.environ["CUBN_KERNELS"] = "emulate"
    module = functions[args.function]
    shape = tuple(args.shape or ((3, 40) if module == "rmsnorm" else (4, 3, 37)))
    inputs = arguments(args.function, shape, numpy.dtype(args.dtype), args.groups)
    cuda = getattr(importlib.import_module("cubn.cuda." + module), args.function)
    ref = getattr(importlib.import_module("cubn.ref." + module), args.function)
    got = cuda(*inputs, version=args.version)
    want = ref(*[a.astype(numpy.float64) if isinstance(a, numpy.ndarray) else a for a in inputs])
    got, want = (v if isinstance(v, tuple) else (v,) for v in (got, want))
    print(f"{args.function} version {args.version or 'default'}, {args.dtype} {shape}: emulated kernels vs "
          f"the float64 NumPy twin")
    for i, (g, w) in enumerate(zip(got, want)):
        diff = numpy.abs(g.astype(numpy.float64) - w).max() if g.size else 0.0
        print(f"  result {i}: {g.dtype} {g.shape}, max |difference| {diff:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
