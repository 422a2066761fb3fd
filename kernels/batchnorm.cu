/*
 * batchnorm.cu -- Batch Normalization forward and backward (Ioffe & Szegedy 2015, arXiv:1502.03167).
 * Layout: x, dy are (N, C, S) contiguous; element (n, c, s) sits at (n*C + c)*S + s, so the M = N*S
 * values of channel c are N runs of S contiguous elements, C*S apart. Position m = n*S + s.
 *   [E1] mean[c] = (1/M) sum x          [E2] var[c] = (1/M) sum (x-mean)^2   (biased)
 *   [E3] rstd = 1/sqrt(var+eps)         [E4] xhat = (x-mean)*rstd    [E5] y = gamma*xhat + beta
 *   [E6] dbeta = sum dy   [E7] dgamma = sum dy*xhat   [E8] dx = gamma*rstd*(dy - (dbeta + xhat*dgamma)/M)
 * Twin: cubn/ref/batchnorm.py (same names, same [E#] tags). Launch: cubn/cuda/batchnorm.py.
 * Types: T stores x, y, dy, dx (half_t, float, double); ACC holds statistics, parameters and sums.
 * Null pointers: gamma and beta may be 0, read as 1 and 0 (None in the twin); dbeta == 0 in the
 * dx kernels means inference backward (mean and var were constants: dx = gamma*rstd*dy).
 * Indices are 64-bit (i64) wherever a product can pass 2^31. No atomics: every sum and merge
 * runs in a fixed order, and the launch geometry depends on the shape alone, so results are bitwise
 * reproducible for a given shape and compiled architecture, whatever the GPU's size.
 * Versions:
 *   batchnorm_stats_v1  one block per channel, corrected two-pass as in the twin (readable baseline)
 *   batchnorm_stats_v2  grid over (channel tile, chunk of M), shifted Welford per lane -> partials; fills the GPU, coalesced for any S
 *   batchnorm_stats_finalize_v2  one warp per channel merges the chunk partials of v2 in a fixed order (no atomics)
 *   batchnorm_normalize_v1  one thread per element, channel = i / S % C (readable baseline)
 *   batchnorm_normalize_v2  2-D row tiles: no division per element, channel parameters read once per row
 *   batchnorm_param_grads_v1  one block per channel, block_sum of dy and dy*xhat (readable baseline)
 *   batchnorm_param_grads_v2  the stats_v2 grid and lane mapping with (sum dy, sum dy*xhat) partials
 *   batchnorm_param_grads_finalize_v2  one warp per channel adds the chunk partials of v2 in a fixed order
 *   batchnorm_dx_v1  one thread per element, channel = i / S % C (readable baseline)
 *   batchnorm_dx_v2  2-D row tiles as normalize_v2; the per-channel terms of [E8] computed once per row
 *   batchnorm_rstd  rstd = 1/sqrt(var+eps) [E3] for inference, one thread per channel (C values: one version)
 */
#include "common.cuh"

typedef long long i64;
typedef Moments<ACC> Stat;       // (count, mean, M2) of a set of values of one channel
struct Sum2 { ACC dbeta, dgamma; };   // partial [E6] and [E7] sums of one channel

constexpr int BLOCK = 256;       // threads of the v2 reduction kernels; cubn/cuda/batchnorm.py uses the same
constexpr unsigned FULL = 0xffffffffu;

// One merge per partial type, so the reduction helpers below serve both phases.
__device__ __forceinline__ Stat combine(Stat a, Stat b) { return merge(a, b); }
__device__ __forceinline__ Sum2 combine(Sum2 a, Sum2 b) { return {a.dbeta + b.dbeta, a.dgamma + b.dgamma}; }
__device__ __forceinline__ Stat shfl_down(Stat v, int off) {
    return {__shfl_down_sync(FULL, v.n, off), __shfl_down_sync(FULL, v.mean, off),
            __shfl_down_sync(FULL, v.m2, off)};
}
__device__ __forceinline__ Sum2 shfl_down(Sum2 v, int off) {
    return {__shfl_down_sync(FULL, v.dbeta, off), __shfl_down_sync(FULL, v.dgamma, off)};
}

// xp.maximum(v, 0) of the twin: a NaN stays NaN (fmax would turn it into 0 and hide it)
__device__ __forceinline__ ACC clamp0(ACC v) { return v < ACC(0) ? ACC(0) : v; }

__device__ __forceinline__ void write_stats(i64 c, ACC mu, ACC v, ACC eps, ACC* mean, ACC* var, ACC* rstd) {
    mean[c] = mean_or_nan(mu, v);
    var[c] = v;
    rstd[c] = ACC(1) / sqrt(v + eps);                                            // [E3]
}

// Element index of position m of channel c: ((m / S)*C + c)*S + m % S. Two divisions: v1 only.
__device__ __forceinline__ i64 elem(i64 m, i64 c, i64 C, i64 S) { return (m / S * C + c) * S + m % S; }

// The shift of channel c's one-pass statistics: robust_shift of its first, middle and last values
__device__ __forceinline__ ACC channel_shift(const T* x, i64 c, i64 C, i64 S, i64 M) {
    return robust_shift(load(x[elem(0, c, C, S)]), load(x[elem((M - 1) / 2, c, C, S)]), load(x[elem(M - 1, c, C, S)]));
}

// a % b (a >= 0, b > 0) in 32 bits when both fit: a 64-bit remainder is a long software routine,
// and walk_rows pays one per row, i.e. one per element when S == 1.
__device__ __forceinline__ i64 mod(i64 a, i64 b) {
    return ((a | b) >> 32) == 0 ? i64(unsigned(a) % unsigned(b)) : a % b;
}

// ---------------------------------------------------------------------------
// v2 reduction mapping, shared by stats_v2 and param_grads_v2.
// A warp holds 32/L channels with L lanes each (L a power of two in [1, 32], the launcher's
// min(32, next pow2 >= S)): lane l of block (bx, k) works for channel c = bx*(32/L) + l/L on
// chunk k, the positions m in [k*Q, min(M, k*Q + Q)). Lane l of warp w reads m = k*Q + w*L + l%L,
// then steps by (BLOCK/32)*L: the L lanes of a channel read L neighbouring positions, and for
// S == 1 (L = 1) a warp reads 32 neighbouring channels of one row n.
// ---------------------------------------------------------------------------
__device__ __forceinline__ i64 tile_channel(i64 L) {
    return (i64)blockIdx.x * (32 / L) + (threadIdx.x & 31) / L;
}

// Calls f(element index) for every position of channel c that this lane owns in chunk blockIdx.y.
// (n, s) advance by (step / S, step % S) plus one carry: no 64-bit division per element.
template <class F>
__device__ void walk_chunk(i64 C, i64 S, i64 M, i64 L, i64 Q, i64 c, F f) {
    const i64 step = (BLOCK / 32) * L;
    const i64 step_n = step / S, step_s = step % S;
    const i64 end = min(M, (i64)blockIdx.y * Q + Q);
    i64 m = (i64)blockIdx.y * Q + (threadIdx.x >> 5) * L + (threadIdx.x & 31) % L;
    i64 n = m / S, s = m % S;
    for (; m < end; m += step) {                                 // range [k*Q, end), invariant m == n*S + s
        f((n * C + c) * S + s);
        n += step_n;
        s += step_s;
        if (s >= S) { s -= S; ++n; }
    }
}

// Reduces every lane's partial to one per channel and stores it at out[blockIdx.y*C + c]:
// first the L lanes of a channel (shuffle tree, lane l%L == 0 ends with it), then warp 0 merges
// the BLOCK/32 warps' results in warp order. Fixed order: deterministic.
// Contract: blockDim.x == BLOCK; every thread calls it once; smem holds BLOCK values.
template <class V>
__device__ void store_partial(V v, V* smem, i64 L, i64 C, V* out) {
    for (int off = int(L) / 2; off > 0; off >>= 1) v = combine(v, shfl_down(v, off));
    smem[threadIdx.x] = v;
    __syncthreads();                 // warp 0 reads the results of the other warps
    const i64 c = tile_channel(L);
    if (threadIdx.x < 32 && threadIdx.x % L == 0 && c < C) {
        for (int w = 1; w < BLOCK / 32; ++w) v = combine(v, smem[w * 32 + threadIdx.x]);
        out[(i64)blockIdx.y * C + c] = v;
    }
}

// Merges the K partials of channel c, k in [0, K): lane l takes k = l, l+32, ... in order, then a
// shuffle tree over the 32 lanes. The result is valid in lane 0. Contract: all 32 lanes call it.
template <class V>
__device__ V merge_partials(const V* partial, i64 K, i64 C, i64 c, V v) {
    for (i64 k = threadIdx.x; k < K; k += 32) v = combine(v, partial[k * C + c]);
    for (int off = 16; off > 0; off >>= 1) v = combine(v, shfl_down(v, off));
    return v;
}

// ---------------------------------------------------------------------------
// v2 elementwise mapping, shared by normalize_v2 and dx_v2. Row r in [0, R = N*C) holds the S
// contiguous values of (n, c) = (r / C, r % C). Thread (tx, ty) takes rows r = bx*blockDim.y + ty
// (grid-stride) and columns s = by*blockDim.x*iters + tx + k*blockDim.x, k in [0, iters). With
// blockDim.x = min(256, next pow2 >= S), a warp reads 32 neighbouring rows when S == 1 and 32
// neighbouring columns of one row when S >= 32. row(c) loads channel c's parameters once and
// returns the per-element function.
// ---------------------------------------------------------------------------
template <class Row>
__device__ void walk_rows(i64 R, i64 C, i64 S, i64 iters, Row row) {
    const i64 s0 = (i64)blockIdx.y * blockDim.x * iters + threadIdx.x;
    for (i64 r = (i64)blockIdx.x * blockDim.y + threadIdx.y; r < R; r += (i64)gridDim.x * blockDim.y) {
        auto element = row(mod(r, C));
        for (i64 k = 0; k < iters; ++k) {
            const i64 s = s0 + k * blockDim.x;                   // range [0, S)
            if (s < S) element(r * S + s);
        }
    }
}

// ===========================================================================
// Statistics [E1]-[E3]
// ===========================================================================

// batchnorm_stats_v1: the twin's corrected two-pass, one block per channel.
// Mapping: block c (range [0, C)); thread t reads positions m = t, t + blockDim.x, ... (range [0, M)).
// Slow where it matters: only C blocks, two divisions per element, and values C*S apart for S == 1.
// Launch: grid (C), block a multiple of 32 up to 1024; static shared memory 32*sizeof(ACC).
extern "C" __global__ void batchnorm_stats_v1(const T* x, ACC* mean, ACC* var, ACC* rstd,
                                              i64 C, i64 S, i64 M, ACC eps) {
    __shared__ ACC scratch[32];
    const i64 c = blockIdx.x;                                    // range [0, C)
    ACC sum = 0;
    for (i64 m = threadIdx.x; m < M; m += blockDim.x) sum += load(x[elem(m, c, C, S)]);
    const ACC mu = block_sum(sum, scratch) / ACC(M);             // [E1]
    ACC sd = 0, sd2 = 0;
    for (i64 m = threadIdx.x; m < M; m += blockDim.x) {
        const ACC d = load(x[elem(m, c, C, S)]) - mu;
        sd += d;
        sd2 += d * d;
    }
    // [E2] mean(d^2) - mean(d)^2: the second term removes the rounding error of mu (see the twin)
    sd = block_sum(sd, scratch) / ACC(M);
    sd2 = block_sum(sd2, scratch) / ACC(M);
    if (threadIdx.x == 0) write_stats(c, mu, clamp0(sd2 - sd * sd), eps, mean, var, rstd);
}

// batchnorm_stats_v2: per-chunk partial Moments; batchnorm_stats_finalize_v2 merges them.
// Why: v1 runs C blocks (too few when C is small) and reads x C*S apart for S == 1. Here grid.y
// splits each channel's M positions into chunks, and the lane mapping above keeps warps coalesced.
// Numerics: one pass, Welford per lane on x - shift, the channel's channel_shift (the median of its
// first, middle and last values). Shifted, the running mean is of the order of the spread, so float32
// keeps its digits where |mean| >> std (unshifted Welford is ~5% off on 1e4 + 0.01*randn, this is
// ~1e-7 like the twin). The lanes' Moments are in the same shifted frame, so Chan's merge combines
// them without cancellation.
// Launch: grid (ceil(C / (32/L)), K) with K = ceil(M / Q) <= 65535, block BLOCK threads; static
// shared memory BLOCK*sizeof(Stat). Writes every partial[k*C + c] (K*C Stats): no zeroing needed.
extern "C" __global__ void batchnorm_stats_v2(const T* x, Stat* partial, i64 C, i64 S, i64 M, i64 L, i64 Q) {
    __shared__ Stat smem[BLOCK];
    Stat t = {0, 0, 0};
    const i64 c = tile_channel(L);
    if (c < C) {
        const ACC shift = channel_shift(x, c, C, S, M);
        walk_chunk(C, S, M, L, Q, c, [&](i64 i) {
            const ACC v = load(x[i]) - shift;
            t.n += ACC(1);
            const ACC delta = v - t.mean;
            t.mean += delta / t.n;
            t.m2 += delta * (v - t.mean);
        });
    }
    store_partial(t, smem, L, C, partial);
}

// batchnorm_stats_finalize_v2: mean = shift + merged mean [E1], var = M2 / M [E2], rstd [E3]; the shift
// is recomputed from x as stats_v2 computed it.
// Mapping: warp threadIdx.y of block b owns channel c = b*blockDim.y + threadIdx.y (range [0, C)).
// Launch: block (32, any y), grid (ceil(C / blockDim.y)); partial holds K*C Stats from stats_v2.
extern "C" __global__ void batchnorm_stats_finalize_v2(const Stat* partial, ACC* mean, ACC* var, ACC* rstd,
                                                       i64 C, i64 K, const T* x, i64 S, i64 M, ACC eps) {
    const i64 c = (i64)blockIdx.x * blockDim.y + threadIdx.y;
    if (c >= C) return;                                          // the whole warp leaves: no shuffle is cut short
    const Stat t = merge_partials(partial, K, C, c, Stat{0, 0, 0});
    if (threadIdx.x == 0) write_stats(c, channel_shift(x, c, C, S, M) + t.mean, clamp0(t.m2 / t.n), eps, mean, var, rstd);
}

// batchnorm_rstd: rstd[c] = 1/sqrt(var[c] + eps) [E3] from given (running) var, for inference.
// Mapping: thread i of the grid owns channel c = i (range [0, C)). Launch: any 1-D grid covering C.
extern "C" __global__ void batchnorm_rstd(const ACC* var, ACC* rstd, i64 C, ACC eps) {
    const i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) rstd[c] = ACC(1) / sqrt(var[c] + eps);            // [E3]
}

// ===========================================================================
// Normalize + affine [E4]-[E5]. gamma and beta are per-channel scale and shift (null: 1 and 0);
// Batch Renorm passes gamma*r and gamma*d + beta here (kernels/batchrenorm.cu).
// ===========================================================================

// batchnorm_normalize_v1: one thread per element, grid-stride loop over i in [0, total = N*C*S).
// Slow: two 64-bit divisions per element, and mean/rstd/gamma/beta reread for every element.
// Launch: any 1-D grid and block.
extern "C" __global__ void batchnorm_normalize_v1(const T* x, const ACC* mean, const ACC* rstd, const ACC* gamma,
                                                  const ACC* beta, T* y, i64 C, i64 S, i64 total) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 c = i / S % C;                                 // range [0, C)
        ACC v = (load(x[i]) - mean[c]) * rstd[c];                // [E4]
        if (gamma) v = v * gamma[c];                             // [E5]
        if (beta) v = v + beta[c];
        store(&y[i], v);
    }
}

// batchnorm_normalize_v2: the same values through the row-tile mapping (walk_rows).
// Why: no division per element, and the channel's four parameters are loaded once per row.
// Launch: block (TX, TY), TX = min(256, next pow2 >= S), TX*TY = 256; grid (row tiles, ceil(S / (TX*iters)))
// with grid.y <= 65535; no shared memory.
extern "C" __global__ void batchnorm_normalize_v2(const T* x, const ACC* mean, const ACC* rstd, const ACC* gamma,
                                                  const ACC* beta, T* y, i64 C, i64 S, i64 R, i64 iters) {
    walk_rows(R, C, S, iters, [&](i64 c) {
        const ACC mu = mean[c], rs = rstd[c];
        const ACC g = gamma ? gamma[c] : ACC(1), b = beta ? beta[c] : ACC(0);
        return [=](i64 i) { store(&y[i], (load(x[i]) - mu) * rs * g + b); };   // [E4] [E5]
    });
}

// ===========================================================================
// Backward: per-channel sums [E6]-[E7], then dx [E8]
// ===========================================================================

// batchnorm_param_grads_v1: dbeta = sum dy, dgamma = sum dy*xhat, one block per channel.
// Mapping and launch as batchnorm_stats_v1 (grid (C), block a multiple of 32, 32*sizeof(ACC) shared).
extern "C" __global__ void batchnorm_param_grads_v1(const T* dy, const T* x, const ACC* mean, const ACC* rstd,
                                                    ACC* dgamma, ACC* dbeta, i64 C, i64 S, i64 M) {
    __shared__ ACC scratch[32];
    const i64 c = blockIdx.x;                                    // range [0, C)
    ACC sdb = 0, sdg = 0;
    for (i64 m = threadIdx.x; m < M; m += blockDim.x) {          // range [0, M)
        const i64 i = elem(m, c, C, S);
        const ACC g = load(dy[i]);
        sdb += g;
        sdg += g * ((load(x[i]) - mean[c]) * rstd[c]);
    }
    block_sums_to(sdb, sdg, scratch, dbeta, dgamma, c);           // [E6] [E7]
}

// batchnorm_param_grads_v2: per-chunk (sum dy, sum dy*xhat); batchnorm_param_grads_finalize_v2 adds them.
// Why: as stats_v2 over stats_v1. Mapping, grid, block and the K*C partial workspace as batchnorm_stats_v2
// (static shared memory BLOCK*sizeof(Sum2)); every partial is written: no zeroing needed.
extern "C" __global__ void batchnorm_param_grads_v2(const T* dy, const T* x, const ACC* mean, const ACC* rstd,
                                                    Sum2* partial, i64 C, i64 S, i64 M, i64 L, i64 Q) {
    __shared__ Sum2 smem[BLOCK];
    Sum2 t = {0, 0};
    const i64 c = tile_channel(L);
    if (c < C) {
        const ACC mu = mean[c], rs = rstd[c];
        walk_chunk(C, S, M, L, Q, c, [&](i64 i) {
            const ACC g = load(dy[i]);
            t.dbeta += g;                                        // [E6]
            t.dgamma += g * ((load(x[i]) - mu) * rs);            // [E7]
        });
    }
    store_partial(t, smem, L, C, partial);
}

// batchnorm_param_grads_finalize_v2: dbeta[c], dgamma[c] from the K partials of channel c.
// Mapping and launch as batchnorm_stats_finalize_v2: one warp per channel, block (32, any y).
extern "C" __global__ void batchnorm_param_grads_finalize_v2(const Sum2* partial, ACC* dgamma, ACC* dbeta,
                                                             i64 C, i64 K) {
    const i64 c = (i64)blockIdx.x * blockDim.y + threadIdx.y;    // range [0, C)
    if (c >= C) return;                                          // the whole warp leaves: no shuffle is cut short
    const Sum2 t = merge_partials(partial, K, C, c, Sum2{0, 0});
    if (threadIdx.x == 0) { dbeta[c] = t.dbeta; dgamma[c] = t.dgamma; }
}

// batchnorm_dx_v1: [E8] one thread per element, grid-stride loop over i in [0, total = N*C*S).
// dbeta == 0: inference backward, dx = gamma*rstd*dy (x, mean and dgamma are not read).
// Launch: any 1-D grid and block.
extern "C" __global__ void batchnorm_dx_v1(const T* dy, const T* x, const ACC* mean, const ACC* rstd,
                                           const ACC* gamma, const ACC* dgamma, const ACC* dbeta, T* dx, i64 M,
                                           i64 C, i64 S, i64 total) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 c = i / S % C;                                 // range [0, C)
        const ACC scale = gamma ? gamma[c] * rstd[c] : rstd[c];
        ACC g = load(dy[i]);
        if (dbeta) g = g - (dbeta[c] + (load(x[i]) - mean[c]) * rstd[c] * dgamma[c]) / ACC(M);
        store(&dx[i], scale * g);
    }
}

// batchnorm_dx_v2: [E8] through the row-tile mapping; dbeta/M and dgamma/M computed once per row.
// Why: as normalize_v2 over normalize_v1. Null dbeta: inference, as dx_v1 (x is then not read).
// Launch: as batchnorm_normalize_v2.
extern "C" __global__ void batchnorm_dx_v2(const T* dy, const T* x, const ACC* mean, const ACC* rstd,
                                           const ACC* gamma, const ACC* dgamma, const ACC* dbeta, T* dx, i64 M,
                                           i64 C, i64 S, i64 R, i64 iters) {
    walk_rows(R, C, S, iters, [&](i64 c) {
        const ACC rs = rstd[c], scale = gamma ? gamma[c] * rs : rs;
        const bool train = dbeta != nullptr;
        const ACC mu = train ? mean[c] : ACC(0);
        const ACC db = train ? dbeta[c] / ACC(M) : ACC(0), dg = train ? dgamma[c] / ACC(M) : ACC(0);
        return [=](i64 i) {
            ACC g = load(dy[i]);
            if (train) g = g - (db + (load(x[i]) - mu) * rs * dg);
            store(&dx[i], scale * g);
        };
    });
}
