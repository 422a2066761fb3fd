"""Launchers for ``kernels/rownorm.cu``: Layer, Instance and Group Normalization on CuPy arrays.

The CUDA twin of ``cubn/ref/rownorm.py``: the same functions and positional
signatures, plus a keyword-only ``version=`` (None: ``DEFAULT_VERSIONS``).
``x`` is (N, C, S); row (n, g) is the contiguous block of K = (C/groups)*S values,
the affine is per channel. gamma/beta None (meaning 1 and 0) reach the kernels
as null pointers (empty arrays, ``loader.null``). ``cubn/cuda/rmsnorm.py`` runs
the same kernels with center=False through ``_forward`` and ``_backward`` below.
Under ``CUBN_KERNELS=emulate`` the arrays are NumPy arrays and the kernels run on
the CPU emulator (``cubn.emulate``).

Versions (the kernel list is in the header of kernels/rownorm.cu):
    1  one block per row, block-stride loops over global memory; dgamma/dbeta
       one block per channel (the readable baseline)
    2  rows in registers: a warp per row when K <= 256, a block when K <= 8192,
       chunks of 8192 positions beyond; dx and the dgamma/dbeta partials in
       one kernel, added in a fixed order by a final kernel

Sizes: K and C at most 2**30 (ValueError otherwise). An empty batch (N == 0)
returns empty outputs and zero dgamma/dbeta without launching anything.
"""
import math
from typing import NamedTuple

import numpy

from cubn.ref.common import acc_dtype

from . import loader

VERSIONS = {"rownorm_forward": (1, 2), "rownorm_backward": (1, 2)}
DEFAULT_VERSIONS = {"rownorm_forward": 2, "rownorm_backward": 2}

FILE = "rownorm.cu"
VPT = 8                       # kernels/rownorm.cu VPT: values per thread held in registers
MAX_BLOCK = 1024              # kernels/rownorm.cu MAX_BLOCK: the block of every split kernel
CHUNK = VPT * MAX_BLOCK       # positions per block when a row is split
WARP_TEAM_BLOCK = 256         # kernels/rownorm.cu WARP_BLOCK: warp teams, 8 rows per block
V1_BLOCK = 256
REDUCE_BLOCK = 1024           # rownorm_params_reduce_v2: 32 rows of 32 lanes (fixed in the kernel)
ROWS_PER_TEAM = 8             # backward_v2: >= 8 rows per team: each partial array <= 1/8 of x's values
# backward_v2: about this many threads' worth of teams (an H100's 132 SMs x 2048), whatever the GPU, so
# that the row sets, and with them the order of the dgamma/dbeta sums, do not depend on the GPU model
RESIDENT_THREADS = 132 * 2048
MAX_SIZE = 2 ** 30            # K and C: in-row int arithmetic in the kernels
# gridDim.x limit of the 1-D launches (grid-stride beyond it); read at each call, so a test can lower it
MAX_GRID = 2 ** 31 - 1


class _Rows(NamedTuple):
    """x (N, C, S) as R = N*groups rows of K = Cg*S values, Cg = C/groups channels per row."""
    N: int
    C: int
    S: int
    groups: int
    Cg: int
    R: int
    K: int

    def geometry(self):
        """(R, K, S, Cg, groups) as the kernels' i64 arguments."""
        return tuple(numpy.int64(v) for v in (self.R, self.K, self.S, self.Cg, self.groups))


# ---------------------------------------------------------------------------
# Checks shared with rmsnorm.py
# ---------------------------------------------------------------------------
def _version(fn, version, versions, defaults):
    v = defaults[fn] if version is None else version
    if type(v) is not int or v not in versions[fn]:
        raise ValueError(f"{fn}: version must be one of {versions[fn]} or None, got {version!r}")
    return v


def _device(name, a):
    if not loader.is_device_array(a):
        raise TypeError(f"{name} must be a {loader.device_array_name()}, got {type(a).__name__}")
    return a


def _input(name, a, ndim, like=None):
    """x or dy: a float16/32/64 CuPy array of ``ndim`` dimensions (dy: x's dtype and shape), C-contiguous."""
    _device(name, a)
    try:
        loader.dtype_defines(a.dtype)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if like is not None and (a.dtype, a.shape) != (like.dtype, like.shape):
        raise ValueError(f"{name} must have x's dtype and shape {like.dtype} {like.shape}, got {a.dtype} {a.shape}")
    return loader.array_module().ascontiguousarray(a)


def _acc_array(name, a, shape, acc):
    """A parameter or statistic: None stays None, else a floating CuPy array of ``shape`` as contiguous ``acc``."""
    if a is None:
        return None
    _device(name, a)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return loader.array_module().ascontiguousarray(a, dtype=acc).reshape(-1)


def _eps(eps, acc):
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return acc(value)


def _rows(shape, groups):
    N, C, S = shape
    if isinstance(groups, bool) or not isinstance(groups, (int, numpy.integer)):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1 or C % groups:
        raise ValueError(f"groups must be a positive divisor of C = {C}, got {groups}")
    groups = int(groups)
    Cg = C // groups
    K = Cg * S
    if N and not K:
        raise ValueError(f"each row needs at least one value; x has shape {shape}")
    if K > MAX_SIZE or C > MAX_SIZE:
        raise ValueError(f"rows of K = {K} values and C = {C} channels must not exceed {MAX_SIZE}")
    return _Rows(N, C, S, groups, Cg, N * groups, K)


# ---------------------------------------------------------------------------
# Launch plumbing
# ---------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def _launch(name, dtype, grid, block, args):
    """Run kernel ``name`` of rownorm.cu compiled for ``dtype`` on a 1-D grid; None arguments become null pointers."""
    if not 1 <= grid <= MAX_GRID:
        raise ValueError(f"{name}: a grid of {grid} blocks is outside [1, {MAX_GRID}]")
    args = tuple(loader.null(acc_dtype(dtype)) if a is None else a for a in args)
    loader.get_function(FILE, name, loader.dtype_defines(dtype))((int(grid),), (int(block),), args)


def _team(K):
    """(warp_team, block) for the register kernels: a warp per row when VPT*32 >= K, else one block of the
    fewest multiple-of-32 threads holding about 4 values each, capped at MAX_BLOCK (so VPT*block >= K up to CHUNK)."""
    if K <= VPT * 32:
        return 1, WARP_TEAM_BLOCK
    return 0, min(MAX_BLOCK, 32 * _cdiv(_cdiv(K, 4), 32))


# ---------------------------------------------------------------------------
# Forward and backward on the (N, C, S) geometry; rmsnorm.py calls these with center=False
# ---------------------------------------------------------------------------
def _forward(x, gamma, beta, rows, eps, center, version):
    """(y, mean, rstd); mean, rstd flat (R,), mean None when not center. Inputs already checked."""
    xp = loader.array_module()
    acc = acc_dtype(x.dtype)
    y = xp.empty_like(x)
    mean = xp.empty(rows.R, acc) if center else None
    rstd = xp.empty(rows.R, acc)
    if rows.R == 0:
        return y, mean, rstd
    R, K = rows.R, rows.K
    flag = numpy.int32(center)
    if version == 1:
        # one block of V1_BLOCK threads per row, grid-stride over rows
        _launch("rownorm_forward_v1", x.dtype, min(R, MAX_GRID), V1_BLOCK,
                (x, gamma, beta, y, mean, rstd, *rows.geometry(), eps, flag))
    elif K <= CHUNK:
        # one team per row (grid-stride): warp teams 8 rows per block, block teams one row per block
        warp, block = _team(K)
        rows_per_block = block // 32 if warp else 1
        _launch("rownorm_forward_v2", x.dtype, min(_cdiv(R, rows_per_block), MAX_GRID), block,
                (x, gamma, beta, y, mean, rstd, *rows.geometry(), eps, flag, numpy.int32(warp)))
    else:
        # one block of MAX_BLOCK per (row, chunk of CHUNK positions): partials, then merge + normalize
        nch = _cdiv(K, CHUNK)
        part_mean, part_m2 = xp.empty(R * nch, acc), xp.empty(R * nch, acc)
        grid = min(R * nch, MAX_GRID)
        _launch("rownorm_stats_split_v2", x.dtype, grid, MAX_BLOCK,
                (x, part_mean, part_m2, numpy.int64(R), numpy.int64(K), numpy.int64(nch), flag))
        _launch("rownorm_normalize_split_v2", x.dtype, grid, MAX_BLOCK,
                (x, gamma, beta, y, mean, rstd, part_mean, part_m2, *rows.geometry(), numpy.int64(nch), eps, flag))
    return y, mean, rstd


def _backward(dy, x, gamma, mean, rstd, rows, center, version):
    """(dx, dgamma, dbeta); mean, rstd flat (R,), mean None when not center. Inputs already checked."""
    xp = loader.array_module()
    acc = acc_dtype(x.dtype)
    N, C, S, groups, Cg, R, K = rows
    dx = xp.empty_like(x)
    dgamma, dbeta = xp.zeros(C, acc), xp.zeros(C, acc)
    if R == 0:
        return dx, dgamma, dbeta
    i64, flag = numpy.int64, numpy.int32(center)
    if version == 1:
        # dx: one block of V1_BLOCK threads per row; dgamma/dbeta: one block per channel (both grid-stride)
        _launch("rownorm_backward_v1", x.dtype, min(R, MAX_GRID), V1_BLOCK,
                (dy, x, gamma, mean, rstd, dx, *rows.geometry(), flag))
        _launch("rownorm_params_v1", x.dtype, min(C, MAX_GRID), V1_BLOCK,
                (dy, x, mean, rstd, dgamma, dbeta, i64(N), i64(C), i64(S), i64(Cg), i64(groups), flag))
        return dx, dgamma, dbeta
    if S > 1 and K > CHUNK:
        # long rows of several channels: P partials per (n, c) run of S values (one block per part), then
        # dx one block per (row, chunk), then dgamma/dbeta over the (N, C, P) partials
        P = _cdiv(S, CHUNK)
        seg_a, seg_b = xp.empty(N * C * P, acc), xp.empty(N * C * P, acc)
        _launch("rownorm_backward_sums_v2", x.dtype, min(N * C * P, MAX_GRID), MAX_BLOCK,
                (dy, x, gamma, mean, rstd, seg_a, seg_b, i64(N * C), i64(S), i64(P), i64(K), i64(S), i64(Cg),
                 i64(groups), numpy.int32(0), flag))
        nch = _cdiv(K, CHUNK)
        _launch("rownorm_backward_dx_split_v2", x.dtype, min(R * nch, MAX_GRID), MAX_BLOCK,
                (dy, x, gamma, mean, rstd, dx, seg_a, seg_b, *rows.geometry(), i64(P), i64(nch)))
        part_dg, part_db, M = seg_b, seg_a, N                      # sum dy*xhat -> dgamma, sum dy -> dbeta
    else:
        row_a = row_b = None
        if K <= CHUNK:
            warp, block = _team(K)
            nch = 1
        else:
            # S == 1 rows longer than a block: a team per chunk, the row sums from a first pass
            warp, block, nch = 0, MAX_BLOCK, _cdiv(K, CHUNK)
            row_a, row_b = xp.empty(R * nch, acc), xp.empty(R * nch, acc)
            _launch("rownorm_backward_sums_v2", x.dtype, min(R * nch, MAX_GRID), MAX_BLOCK,
                    (dy, x, gamma, mean, rstd, row_a, row_b, i64(R), i64(K), i64(nch), i64(K), i64(S), i64(Cg),
                     i64(groups), numpy.int32(1), flag))
        # teams (group g, chunk, row set jt of rows jt, jt + nt, ...): about one GPU-full of teams, each
        # with >= ROWS_PER_TEAM rows where N allows; partials (nt, C)
        team = 32 if warp else block
        nt = max(1, min(_cdiv(N, ROWS_PER_TEAM), _cdiv(RESIDENT_THREADS // team, groups * nch)))
        part_dg, part_db = xp.empty(nt * C, acc), xp.empty(nt * C, acc)
        _launch("rownorm_backward_v2_warp" if warp else "rownorm_backward_v2", x.dtype,
                _cdiv(groups * nch * nt, block // team), block,
                (dy, x, gamma, mean, rstd, dx, row_a, row_b, part_dg, part_db, i64(N), i64(K), i64(S), i64(Cg),
                 i64(groups), i64(nch), i64(nt), flag))
        M, P = nt, 1
    # dgamma[c], dbeta[c] = fixed-order sums of the (M, C, P) partials: 32 channels per block
    _launch("rownorm_params_reduce_v2", x.dtype, _cdiv(C, 32), REDUCE_BLOCK,
            (part_dg, part_db, dgamma, dbeta, i64(M), i64(C), i64(P)))
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------
# The kernel API (cubn/ref/rownorm.py)
# ---------------------------------------------------------------------------
def rownorm_forward(x, gamma, beta, groups, eps, *, version=None):
    """Normalize each row (n, g) of x (N, C, S); return (y, mean, rstd), mean/rstd (N, groups).

    gamma, beta: (C,) or None (1 and 0); stored and returned statistics in the accumulation dtype
    (float64 for float64 x, float32 otherwise); y in x's dtype. eps finite and >= 0.
    """
    v = _version("rownorm_forward", version, VERSIONS, DEFAULT_VERSIONS)
    x = _input("x", x, 3)
    rows = _rows(x.shape, groups)
    acc = acc_dtype(x.dtype)
    gamma, beta = _acc_array("gamma", gamma, (rows.C,), acc), _acc_array("beta", beta, (rows.C,), acc)
    y, mean, rstd = _forward(x, gamma, beta, rows, _eps(eps, acc), True, v)
    return y, mean.reshape(rows.N, rows.groups), rstd.reshape(rows.N, rows.groups)


def rownorm_backward(dy, x, gamma, mean, rstd, groups, *, version=None):
    """Gradients of rownorm_forward for upstream dy (N, C, S); return (dx, dgamma, dbeta).

    mean, rstd: (N, groups) as rownorm_forward returned them; dx in x's dtype, dgamma and dbeta (C,)
    in the accumulation dtype, always arrays.
    """
    v = _version("rownorm_backward", version, VERSIONS, DEFAULT_VERSIONS)
    x = _input("x", x, 3)
    dy = _input("dy", dy, 3, like=x)
    rows = _rows(x.shape, groups)
    acc = acc_dtype(x.dtype)
    gamma = _acc_array("gamma", gamma, (rows.C,), acc)
    if mean is None or rstd is None:
        raise TypeError("mean and rstd must be the arrays rownorm_forward returned, got None")
    mean = _acc_array("mean", mean, (rows.N, rows.groups), acc)
    rstd = _acc_array("rstd", rstd, (rows.N, rows.groups), acc)
    return _backward(dy, x, gamma, mean, rstd, rows, True, v)
