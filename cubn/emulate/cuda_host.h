/*
 * cuda_host.h -- the CUDA names kernels/*.cu use, defined for the host C++ compiler.
 *
 * The emulator (cubn/emulate/) compiles an unmodified kernel file with
 *     g++ -std=c++17 -include cuda_host.h -I kernels/ ...
 * Every CUDA thread then runs as its own fiber (cubn/emulate/runtime.cpp), so
 *   - threadIdx is the running fiber's index; blockIdx, blockDim, gridDim are the block's;
 *   - __syncthreads() is a real barrier that every thread of the block must reach, at the same line;
 *   - a warp shuffle or vote is an exchange between fibers: every lane in the mask must arrive at
 *     the same call with the same mask, and a lane may only read from a lane that did;
 *   - __shared__ variables live in one linker section that is filled with 0xFF bytes (NaN for
 *     float and double) before every block, so a read before any write shows up.
 * The violations are reported with the kernel's name, the file and the line (see runtime.cpp).
 *
 * Not emulated: dynamic shared memory (extern __shared__), atomics, textures, cooperative groups.
 */
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CUBN_EMULATE 1     // common.cuh takes its host path for the float16 conversions

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)       // read by the emulator's build step, which checks launches against it
#define __shared__ static __attribute__((section("cubn_shared")))

struct uint3 { unsigned x, y, z; };
typedef uint3 dim3;

namespace cubn_emu {

extern const uint3* thread_idx;      // the index of the thread running now (runtime.cpp switches it)
extern uint3 block_idx, block_dim, grid_dim;

// The thread waits at the barrier of (file, line) until every thread of the block is there.
void syncthreads(const char* file, int line);

// Warp collectives. kind: what the lanes exchange; arg: lane, delta, xor mask or predicate.
enum WarpOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, SYNCWARP };
uint64_t warp_op(WarpOp kind, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);

template <class V>
V shuffle(WarpOp kind, unsigned mask, V v, int arg, int width, const char* file, int line) {
    static_assert(sizeof(V) <= 8, "a shuffle moves at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    bits = warp_op(kind, mask, bits, arg, width, file, line);
    memcpy(&v, &bits, sizeof(V));
    return v;
}

// float16 <-> float32, exactly as the PTX cvt.f32.f16 and cvt.rn.f16.f32 that common.cuh uses on a GPU
float half_to_float(unsigned short bits);
unsigned short float_to_half(float f);

}  // namespace cubn_emu

#define threadIdx (*cubn_emu::thread_idx)
#define blockIdx (cubn_emu::block_idx)
#define blockDim (cubn_emu::block_dim)
#define gridDim (cubn_emu::grid_dim)
#define warpSize 32

#define __syncthreads() cubn_emu::syncthreads(__FILE__, __LINE__)

// __builtin_FILE/LINE as default arguments name the line of the call, inside the kernel's source
template <class V>
V __shfl_sync(unsigned mask, V v, int src, int width = 32,
              const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cubn_emu::shuffle(cubn_emu::SHFL_IDX, mask, v, src, width, f, l);
}
template <class V>
V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32,
                 const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cubn_emu::shuffle(cubn_emu::SHFL_UP, mask, v, int(delta), width, f, l);
}
template <class V>
V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32,
                   const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cubn_emu::shuffle(cubn_emu::SHFL_DOWN, mask, v, int(delta), width, f, l);
}
template <class V>
V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32,
                  const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return cubn_emu::shuffle(cubn_emu::SHFL_XOR, mask, v, lane_mask, width, f, l);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return unsigned(cubn_emu::warp_op(cubn_emu::BALLOT, mask, pred != 0, 0, 32, f, l));
}
inline int __any_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return int(cubn_emu::warp_op(cubn_emu::ANY, mask, pred != 0, 0, 32, f, l));
}
inline int __all_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    return int(cubn_emu::warp_op(cubn_emu::ALL, mask, pred != 0, 0, 32, f, l));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
    cubn_emu::warp_op(cubn_emu::SYNCWARP, mask, 0, 0, 32, f, l);
}

// Device math that the host library spells differently. sqrt, fma, fabs, exp, ... come from math.h,
// which in C++ overloads them for float and double as CUDA does.
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline double rsqrt(double v) { return 1.0 / sqrt(v); }

// CUDA's min/max overloads: integers compare, floating point is fmin/fmax (a NaN operand is dropped)
#define CUBN_MINMAX(type)                                            \
    inline type min(type a, type b) { return b < a ? b : a; }        \
    inline type max(type a, type b) { return a < b ? b : a; }
CUBN_MINMAX(int)
CUBN_MINMAX(unsigned)
CUBN_MINMAX(long)
CUBN_MINMAX(unsigned long)
CUBN_MINMAX(long long)
CUBN_MINMAX(unsigned long long)
#undef CUBN_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
