/*
 * batchrenorm.cu -- what Batch Renormalization (Ioffe 2017, arXiv:1702.03275) changes in Batch Norm.
 * Layout and statistics are BN's (kernels/batchnorm.cu, [E1]-[E8]); running_mean and running_std are
 * the moving mean and moving standard deviation (C,). r and d are constants for the backward:
 *   [R1] r = clip(sqrt(var+eps) / running_std, 1/rmax, rmax)
 *   [R2] d = clip((mean - running_mean) / running_std, -dmax, dmax)
 *   [R3] y = gamma*(xhat*r + d) + beta = xhat*(gamma*r) + (gamma*d + beta)
 *   [R4] dgamma = r*dgamma_BN + d*dbeta      (dx and dbeta are BN's with gamma*r in place of gamma)
 * So the forward is BN's statistics, batchrenorm_forward_params, then BN's normalize kernel with
 * gamma*r and gamma*d + beta; the backward is BN's per-channel sums, batchrenorm_backward_params,
 * then BN's dx kernel with gamma*r. Only per-channel work lives here.
 * Twin: cubn/ref/batchrenorm.py (same [R#] tags). Launch: cubn/cuda/batchrenorm.py.
 * Types: ACC from the loader (T is unused: no kernel here touches x). gamma and beta may be null
 * pointers, read as 1 and 0 (None in the twin).
 * Versions:
 *   batchrenorm_forward_params  r, d [R1]-[R2] and the scale/shift that make BN's normalize give [R3]; one thread per channel, C values: one version is all it needs
 *   batchrenorm_backward_params  gamma*r for BN's dx kernel and dgamma [R4]; one thread per channel, C values: one version
 */
#include "common.cuh"

typedef long long i64;

// numpy.clip(v, lo, hi) = minimum(maximum(v, lo), hi), NaN kept (fmin/fmax would drop it)
__device__ __forceinline__ ACC clip(ACC v, ACC lo, ACC hi) { return v < lo ? lo : (v > hi ? hi : v); }

// batchrenorm_forward_params: per channel r [R1], d [R2], and BN normalize's gamma_r = gamma*r and
// beta_d = gamma*d + beta [R3]. rmax_inv is 1/rmax rounded once from double on the host, as in the twin.
// Mapping: thread i of the grid owns channel c = i (range [0, C)).
// Launch: any 1-D grid covering C; no shared memory; outputs r, d, gamma_r, beta_d (C,) need no zeroing.
extern "C" __global__ void batchrenorm_forward_params(const ACC* mean, const ACC* var, const ACC* running_mean,
                                                      const ACC* running_std, const ACC* gamma, const ACC* beta,
                                                      ACC* r, ACC* d, ACC* gamma_r, ACC* beta_d, i64 C,
                                                      ACC rmax_inv, ACC rmax, ACC dmax, ACC eps) {
    const i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const ACC rc = clip(sqrt(var[c] + eps) / running_std[c], rmax_inv, rmax);                 // [R1]
    const ACC dc = clip((mean[c] - running_mean[c]) / running_std[c], -dmax, dmax);         // [R2]
    const ACC g = gamma ? gamma[c] : ACC(1);
    r[c] = rc;
    d[c] = dc;
    gamma_r[c] = g * rc;                                                                    // [R3]
    beta_d[c] = beta ? g * dc + beta[c] : g * dc;
}

// batchrenorm_backward_params: after BN's per-channel sums (dgamma_bn = sum dy*xhat, dbeta = sum dy),
// gamma_r = gamma*r for BN's dx kernel and dgamma = r*dgamma_bn + d*dbeta [R4]. dgamma must not alias
// dgamma_bn: BN's dx kernel still needs dgamma_bn afterwards.
// Mapping and launch as batchrenorm_forward_params.
extern "C" __global__ void batchrenorm_backward_params(const ACC* gamma, const ACC* r, const ACC* d,
                                                       const ACC* dgamma_bn, const ACC* dbeta, ACC* gamma_r,
                                                       ACC* dgamma, i64 C) {
    const i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    gamma_r[c] = gamma ? gamma[c] * r[c] : r[c];
    dgamma[c] = r[c] * dgamma_bn[c] + d[c] * dbeta[c];                                      // [R4]
}
