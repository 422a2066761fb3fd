/*
 * common.cuh -- helpers shared by every kernel file: element types, warp and block sums.
 *
 * The loader (cubn/cuda/loader.py) compiles each .cu once per element type with
 *   #define T    float | double | half_t     storage type of x, y, dx, dy
 *   #define ACC  float | double              accumulation and statistics type
 * Kernels read with load(p[i]) -> ACC and write with store(&p[i], value).
 *
 * No CUDA headers are included, so NVRTC compiles these files on its own (the
 * CPU-only CI check does exactly that).
 */
#pragma once

// ---------------------------------------------------------------------------
// float16 without cuda_fp16.h: the 16 raw bits, converted by one PTX
// instruction each way (round-to-nearest-even on the way down, as numpy does).
// The one host-specific spot: the CPU emulator (cubn/emulate/cuda_host.h)
// defines CUBN_EMULATE and converts in C++ instead, bit for bit the same.
// ---------------------------------------------------------------------------
struct half_t { unsigned short bits; };

#ifdef CUBN_EMULATE
#define HALF_TO_FLOAT(bits, f) ((f) = cubn_emu::half_to_float(bits))
#define FLOAT_TO_HALF(f, bits) ((bits) = cubn_emu::float_to_half(f))
#else
#define HALF_TO_FLOAT(bits, f) asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits))
#define FLOAT_TO_HALF(f, bits) asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(f))
#endif

__device__ __forceinline__ float load(half_t h) {
    float f;
    HALF_TO_FLOAT(h.bits, f);
    return f;
}
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ double load(double v) { return v; }

__device__ __forceinline__ void store(half_t* p, float v) {
    unsigned short bits;
    FLOAT_TO_HALF(v, bits);
    p->bits = bits;
}
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }

// 1/sqrt in the accumulation type (rsqrt is one instruction in float, exact-rounded path in double)
__device__ __forceinline__ float rsqrt_acc(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_acc(double v) { return rsqrt(v); }

// ---------------------------------------------------------------------------
// warp_sum: the sum of v over the 32 lanes of a warp, returned to every lane.
// Contract: all 32 lanes of the warp call it (full mask). Butterfly order is
// fixed, so the result is the same on every run.
// ---------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// ---------------------------------------------------------------------------
// block_sum: the sum of v over all threads of the block, returned to every thread.
// Contract: blockDim.x is a multiple of 32 and at most 1024; every thread calls
// it; `scratch` points to at least 32 elements of shared memory that the caller
// does not touch between the call and its return. Fixed order: deterministic.
// ---------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                 // scratch may still be read by a previous block_sum
    if (lane == 0) scratch[warp] = v;
    __syncthreads();                 // every warp's partial is in scratch
    v = (lane < warps) ? scratch[lane] : A(0);
    return warp_sum(v);              // every warp reduces the partials itself: no third barrier
}

// block_sums_to: the block sums of a and b, stored by thread 0 at out_a[i] and out_b[i].
// Contract: block_sum's (every thread calls it, with the same i).
template <typename A>
__device__ __forceinline__ void block_sums_to(A a, A b, A* scratch, A* out_a, A* out_b, long long i) {
    a = block_sum(a, scratch);
    b = block_sum(b, scratch);
    if (threadIdx.x == 0) {
        out_a[i] = a;
        out_b[i] = b;
    }
}

// ---------------------------------------------------------------------------
// Non-finite input (the contract in cubn/ref/__init__.py): a channel or row that holds an inf or a NaN
// has a NaN variance (inf - inf among its deviations), and its mean is reported as NaN too. A merge of
// shifted partials cannot tell a +inf mean from a NaN one; the twins make the same choice. `var` may be
// anything that is NaN exactly when the variance is, such as rstd.
// ---------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A mean_or_nan(A mean, A var) { return var != var ? var : mean; }

// ---------------------------------------------------------------------------
// robust_shift: the common shift of one-pass and chunked statistics, subtracted from every value so
// that float sums keep the digits of the spread when |mean| >> std. It must lie near the data: a shift
// 1e4 away makes x - shift lose the low digits of every x (float32 rounds 1e4 + 0.123456 to 1e-3). The
// median of three values (the first, middle and last of the set) is never a single outlier among them.
// Not finite (an inf or NaN among the three): 0, and the non-finite value shows in the statistics.
// ---------------------------------------------------------------------------
template <typename A>
__device__ __forceinline__ A robust_shift(A a, A b, A c) {
    const A lo = a < b ? a : b, hi = a < b ? b : a;
    const A m = c < lo ? lo : (c > hi ? hi : c);
    return m - m == A(0) ? m : A(0);
}

// ---------------------------------------------------------------------------
// Welford/Chan merge of two partial statistics (count n, mean, M2 = sum of squared
// deviations). Used where partial results from different blocks are combined:
// merging means and M2 directly avoids E[x^2] - E[x]^2 cancellation.
// ---------------------------------------------------------------------------
template <typename A>
struct Moments { A n, mean, m2; };

template <typename A>
__device__ __forceinline__ Moments<A> merge(Moments<A> a, Moments<A> b) {
    const A n = a.n + b.n;
    if (n == A(0)) return a;
    const A delta = b.mean - a.mean;
    const A wb = b.n / n;
    Moments<A> out;
    out.n = n;
    out.mean = a.mean + delta * wb;
    out.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    return out;
}
