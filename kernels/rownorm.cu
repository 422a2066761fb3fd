/*
 * rownorm.cu -- Layer, Instance and Group Normalization and RMSNorm: normalize the rows of an (R, K) view
 * (Ba et al. 2016, arXiv:1607.06450; Ulyanov et al. 2016, arXiv:1607.08022; Wu & He 2018, arXiv:1803.08494;
 * Zhang & Sennrich 2019, arXiv:1910.07467).
 * Layout: x, dy are (N, C, S) contiguous; the C channels form `groups` groups of Cg = C/groups. Row
 * r = n*groups + g is the contiguous block of K = Cg*S values at r*K; its position k has channel
 * c = g*Cg + k/S. LayerNorm passes (R, K, 1) with groups = 1 (channel = position), InstanceNorm
 * groups = C, GroupNorm groups = G; RMSNorm passes (R, K, 1), groups = 1 and center = 0.
 *   [E1] mean = (1/K) sum x      [E2] var = (1/K) sum d^2 - ((1/K) sum d)^2, d = x - mean (corrected two-pass)
 *   [E3] rstd = 1/sqrt(var+eps)  [E4] xhat = (x-mean)*rstd     [E5] y = gamma[c]*xhat + beta[c]
 *   [E6] dbeta[c] = sum dy       [E7] dgamma[c] = sum dy*xhat  (over n and s)
 *   [E8] dx = rstd*(g - mean(g) - xhat*mean(g*xhat)),  g = gamma[c]*dy, means over the row
 * center == 0 (RMSNorm): mean is 0, no correction term, no mean(g) term:
 *   [M1] ms = (1/K) sum x^2   [M2] rrms = 1/sqrt(ms+eps), returned in rstd   [M3] xhat = x*rrms
 *   [M4] y = gamma*xhat       [M5] dgamma = sum dy*xhat                      [M6] dx = rrms*(g - xhat*mean(g*xhat))
 * Twins: cubn/ref/rownorm.py, cubn/ref/rmsnorm.py (same [E#]/[M#] tags). Launch: cubn/cuda/rownorm.py, rmsnorm.py.
 * Types: T stores x, y, dy, dx (half_t, float, double); ACC holds statistics, parameters and sums.
 * Null pointers: gamma, beta read as 1 and 0 (None in the twins); mean may be null when center == 0.
 * Sizes: R*K may pass 2^31 (64-bit i64 offsets); K and C are at most 2^30 (the launcher checks), so in-row
 * positions, k/S and k + VPT*1024 fit an int. No atomics: every sum runs in a fixed order, and the launch geometry
 * depends on the shape alone (not the SM count), so results are bitwise reproducible for a given shape and architecture.
 * v2 keeps VPT values per thread in registers: a row of K <= VPT*32 goes to one warp, K <= VPT*1024 to one
 * block; longer rows are cut in chunks of VPT*1024 positions, one block each, with partials in a workspace.
 * Versions:
 *   rownorm_forward_v1  one block per row, three block-stride passes over x in global memory (readable baseline)
 *   rownorm_forward_v2  one warp or block per row holding the row in registers: x read from DRAM once, not three times
 *   rownorm_stats_split_v2  rows too long for a block: one block per chunk writes the chunk's (mean, M2) partials
 *   rownorm_normalize_split_v2  every block of a row merges the row's chunk partials in one fixed order, then normalizes its chunk
 *   rownorm_backward_v1  one block per row: row sums of g and g*xhat, then dx, two passes over global memory (readable baseline)
 *   rownorm_params_v1  one block per channel, block_sum of dy and dy*xhat over its N*S values (readable baseline)
 *   rownorm_backward_v2  warp or block per (group, chunk, row set): dx and per-channel partials from one read of dy and x
 *   rownorm_backward_v2_warp  the same for warp teams in 256-thread blocks, bounded there: float64 no longer spills
 *   rownorm_backward_sums_v2  long rows: per-chunk sums of w*dy and w*dy*xhat (row sums, or the (n, c) partials)
 *   rownorm_backward_dx_split_v2  long rows with S > 1: row sums rebuilt from the (n, c) partials, dx for one chunk
 *   rownorm_params_reduce_v2  dgamma, dbeta: the v2 partials added over row sets and chunks in a fixed order
 */
#include "common.cuh"

typedef long long i64;

#define VPT 8            // values per thread held in registers by the v2 kernels
#define MAX_BLOCK 1024   // largest block; the split kernels run with it, a chunk is VPT*MAX_BLOCK positions
#define WARP_BLOCK 256   // block of the warp-team launches (8 rows per block)

// xp.maximum(v, 0) of the twins: a NaN stays NaN (fmax would turn it into 0 and hide it)
__device__ __forceinline__ ACC clamp0(ACC v) { return v < ACC(0) ? ACC(0) : v; }

// [E2] / [M1]: var from the sums sd, sd2 of d = x - mu over n values; centered rows subtract mean(d)^2.
__device__ __forceinline__ ACC variance(ACC sd, ACC sd2, ACC n, int center) {
    const ACC m1 = sd / n;
    return clamp0(center ? sd2 / n - m1 * m1 : sd2 / n);
}

// Channel of in-row position k of a row whose first channel is cbase. k, S <= 2^30: 32-bit divide.
__device__ __forceinline__ i64 channel(i64 cbase, i64 k, i64 S) {
    return cbase + (S == 1 ? k : (i64)((int)k / (int)S));
}

// The common shift of a row's chunk statistics (robust_shift of its first, middle and last values)
__device__ __forceinline__ ACC row_shift(const T* xr, i64 K) {
    return robust_shift(load(xr[0]), load(xr[(K - 1) / 2]), load(xr[K - 1]));
}

__device__ __forceinline__ ACC weight(const ACC* gamma, i64 c) { return gamma ? gamma[c] : ACC(1); }

// gamma[c] at position k; the divide in channel() only runs when there is a gamma
__device__ __forceinline__ ACC weight_at(const ACC* gamma, i64 cbase, i64 k, i64 S) {
    return gamma ? gamma[channel(cbase, k, S)] : ACC(1);
}

// [E5] / [M4]: y = gamma[c]*xhat + beta[c] at position k
__device__ __forceinline__ ACC affine(ACC xh, const ACC* gamma, const ACC* beta, i64 cbase, i64 k, i64 S) {
    if (!gamma && !beta) return xh;
    const i64 c = channel(cbase, k, S);
    return xh * weight(gamma, c) + (beta ? beta[c] : ACC(0));
}

// A team is one warp (warp_team != 0) or the whole block. warp_team is a kernel argument, the same in every
// thread, so block_sum's barriers are reached by all threads of the block or by none.
__device__ __forceinline__ ACC team_sum(ACC v, ACC* scratch, int warp_team) {
    return warp_team ? warp_sum(v) : block_sum(v, scratch);
}

// ===========================================================================
// Forward [E1]-[E5] / [M1]-[M4]
// ===========================================================================

// v1: one block per row r = blockIdx.x, + gridDim.x, ... (block-uniform, so every thread reaches the barriers
// in block_sum); thread t reads positions k = t, t + blockDim.x, ... three times (mean, deviations, output).
// Launch: blockDim.x a multiple of 32, <= 1024; any grid; no dynamic shared memory; nothing zeroed.
extern "C" __global__ void rownorm_forward_v1(const T* x, const ACC* gamma, const ACC* beta, T* y, ACC* mean,
                                              ACC* rstd, i64 R, i64 K, i64 S, i64 Cg, i64 groups, ACC eps,
                                              int center) {
    __shared__ ACC scratch[32];
    for (i64 r = blockIdx.x; r < R; r += gridDim.x) {                                    // range [0, R)
        const T* xr = x + r * K;
        ACC s = 0;
        for (i64 k = threadIdx.x; k < K; k += blockDim.x) s += load(xr[k]);               // range [0, K)
        const ACC mu = center ? block_sum(s, scratch) / ACC(K) : ACC(0);                  // [E1]
        ACC sd = 0, sd2 = 0;
        for (i64 k = threadIdx.x; k < K; k += blockDim.x) {                               // range [0, K)
            const ACC d = load(xr[k]) - mu;
            sd += d;
            sd2 += d * d;
        }
        sd = block_sum(sd, scratch);
        sd2 = block_sum(sd2, scratch);
        const ACC rs = ACC(1) / sqrt(variance(sd, sd2, ACC(K), center) + eps);           // [E2] [E3] / [M1] [M2]
        if (threadIdx.x == 0) {
            if (mean) mean[r] = mean_or_nan(mu, rs);   // rs is NaN exactly when var is
            rstd[r] = rs;
        }
        const i64 cbase = r % groups * Cg;
        for (i64 k = threadIdx.x; k < K; k += blockDim.x)                                 // range [0, K)
            store(&y[r * K + k], affine((load(xr[k]) - mu) * rs, gamma, beta, cbase, k, S));  // [E4] [E5]
    }
}

// v2: v1 read x from DRAM three times; here the row is loaded once into registers and the statistics and the
// output come from there. A team of `team` threads owns a row: lane l holds positions k = l + j*team,
// j in [0, VPT). Warp teams (K <= VPT*32) put blockDim.x/32 rows in one block, so short rows do not leave most
// of a block idle; block teams hold one row per block. Rows r = team id + i*(teams in the grid), uniform in a team.
// Launch: blockDim.x a multiple of 32, <= 1024; VPT*team >= K (team = 32 or blockDim.x): positions past
// VPT*team would be skipped; any grid; no dynamic shared memory; nothing zeroed.
extern "C" __global__ void __launch_bounds__(MAX_BLOCK)
rownorm_forward_v2(const T* x, const ACC* gamma, const ACC* beta, T* y, ACC* mean, ACC* rstd,
                   i64 R, i64 K, i64 S, i64 Cg, i64 groups, ACC eps, int center, int warp_team) {
    __shared__ ACC scratch[32];
    const int team = warp_team ? 32 : blockDim.x;
    const int lane = threadIdx.x % team;
    const i64 teams = (i64)gridDim.x * (blockDim.x / team);
    for (i64 r = (i64)blockIdx.x * (blockDim.x / team) + threadIdx.x / team; r < R; r += teams) {  // range [0, R)
        const T* xr = x + r * K;
        ACC v[VPT];
        ACC s = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 k = lane + j * team;                                                // range [0, VPT*team)
            v[j] = k < K ? load(xr[k]) : ACC(0);
            s += v[j];
        }
        const ACC mu = center ? team_sum(s, scratch, warp_team) / ACC(K) : ACC(0);      // [E1]
        ACC sd = 0, sd2 = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            if (lane + j * team < K) {
                const ACC d = v[j] - mu;
                sd += d;
                sd2 += d * d;
            }
        }
        sd = team_sum(sd, scratch, warp_team);
        sd2 = team_sum(sd2, scratch, warp_team);
        const ACC rs = ACC(1) / sqrt(variance(sd, sd2, ACC(K), center) + eps);           // [E2] [E3] / [M1] [M2]
        if (lane == 0) {
            if (mean) mean[r] = mean_or_nan(mu, rs);   // rs is NaN exactly when var is
            rstd[r] = rs;
        }
        const i64 cbase = r % groups * Cg;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 k = lane + j * team;
            if (k < K) store(&y[r * K + k], affine((v[j] - mu) * rs, gamma, beta, cbase, k, S));  // [E4] [E5]
        }
    }
}

// Split rows, step 1: a row longer than VPT*1024 would give a one-block-per-row grid only a few blocks (the
// (2, 2, 2^21) case): cut it in nch chunks of CH = VPT*blockDim.x positions, one block per item i = r*nch + ch.
// The block holds positions k = ch*CH + t + j*blockDim.x (j in [0, VPT)) in registers and writes the chunk's
// mean and M2 = sum d^2 - (sum d)^2/n by the corrected two-pass of v2 (center == 0: mean 0, M2 = sum x^2).
// Values are shifted by row_shift, the median of the row's first, middle and last values (shifted data:
// chunk sums of 1e4 + noise in float would otherwise lose the noise's digits, and the merge would add
// their rounding to M2; the median keeps one outlier at those positions from becoming the shift).
// Launch: blockDim.x = MAX_BLOCK (normalize_split_v2 assumes the same CH), nch = ceil(K / CH), any grid;
// part_mean, part_m2 hold R*nch values, every one written here.
extern "C" __global__ void __launch_bounds__(MAX_BLOCK)
rownorm_stats_split_v2(const T* x, ACC* part_mean, ACC* part_m2, i64 R, i64 K, i64 nch, int center) {
    __shared__ ACC scratch[32];
    const i64 CH = (i64)VPT * blockDim.x;
    for (i64 i = blockIdx.x; i < R * nch; i += gridDim.x) {                               // range [0, R*nch)
        const i64 r = i / nch, k0 = i % nch * CH;
        const ACC n = ACC(K - k0 < CH ? K - k0 : CH);                                     // positions in the chunk
        const T* xr = x + r * K;
        const ACC shift = center ? row_shift(xr, K) : ACC(0);
        ACC v[VPT];
        ACC s = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 k = k0 + threadIdx.x + j * blockDim.x;                              // range [k0, k0 + CH)
            v[j] = k < K ? load(xr[k]) - shift : ACC(0);
            s += v[j];
        }
        const ACC mu = center ? block_sum(s, scratch) / n : ACC(0);                       // of x - shift
        ACC sd = 0, sd2 = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            if (k0 + threadIdx.x + j * blockDim.x < K) {
                const ACC d = v[j] - mu;
                sd += d;
                sd2 += d * d;
            }
        }
        sd = block_sum(sd, scratch);
        sd2 = block_sum(sd2, scratch);
        if (threadIdx.x == 0) {
            part_mean[i] = mu;
            part_m2[i] = clamp0(center ? sd2 - sd * sd / n : sd2);
        }
    }
}

// Split rows, step 2: each block of row r merges the row's nch partials itself -- thread t takes chunks
// q = t, t + blockDim.x, ... and block_sum adds in a fixed order, so every block of the row gets the same
// mean and rstd bit for bit -- then normalizes its own chunk, read again from global memory.
// Merge of nch parts (Chan, Golub & LeVeque), n_q positions in chunk q, d_q = mean_q - mean, all of x - shift:
//   mean = sum n_q*mean_q / K,  M2 = sum (M2_q + n_q*d_q^2),  var = M2/K - (sum n_q*d_q / K)^2 (corrected);
// the row's mean is shift + mean.
// Launch: blockDim.x, nch as stats_split_v2 (same CH), any grid; block ch == 0 writes mean[r], rstd[r].
extern "C" __global__ void __launch_bounds__(MAX_BLOCK)
rownorm_normalize_split_v2(const T* x, const ACC* gamma, const ACC* beta, T* y, ACC* mean, ACC* rstd,
                           const ACC* part_mean, const ACC* part_m2, i64 R, i64 K, i64 S, i64 Cg, i64 groups,
                           i64 nch, ACC eps, int center) {
    __shared__ ACC scratch[32];
    const i64 CH = (i64)VPT * blockDim.x;
    for (i64 i = blockIdx.x; i < R * nch; i += gridDim.x) {                               // range [0, R*nch)
        const i64 r = i / nch, k0 = i % nch * CH;
        const ACC* pm = part_mean + r * nch;
        const ACC* p2 = part_m2 + r * nch;
        const T* xr = x + r * K;
        const ACC shift = center ? row_shift(xr, K) : ACC(0);                             // as in stats_split_v2
        ACC s = 0;
        for (i64 q = threadIdx.x; q < nch; q += blockDim.x)                               // range [0, nch)
            s += ACC(K - q * CH < CH ? K - q * CH : CH) * pm[q];
        const ACC mu = center ? block_sum(s, scratch) / ACC(K) : ACC(0);                  // [E1], less shift
        ACC sd = 0, m2 = 0;
        for (i64 q = threadIdx.x; q < nch; q += blockDim.x) {                             // range [0, nch)
            const ACC nq = ACC(K - q * CH < CH ? K - q * CH : CH), d = pm[q] - mu;
            sd += nq * d;
            m2 += p2[q] + nq * d * d;
        }
        sd = block_sum(sd, scratch);
        m2 = block_sum(m2, scratch);
        const ACC rs = ACC(1) / sqrt(variance(sd, m2, ACC(K), center) + eps);            // [E2] [E3] / [M1] [M2]
        if (k0 == 0 && threadIdx.x == 0) {
            if (mean) mean[r] = mean_or_nan(shift + mu, rs);
            rstd[r] = rs;
        }
        const i64 cbase = r % groups * Cg;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 k = k0 + threadIdx.x + j * blockDim.x;                              // range [k0, k0 + CH)
            if (k < K) store(&y[r * K + k], affine((load(xr[k]) - shift - mu) * rs, gamma, beta, cbase, k, S));  // [E4] [E5]
        }
    }
}

// ===========================================================================
// Backward [E6]-[E8] / [M5]-[M6]
// ===========================================================================

// v1: one block per row (block-uniform grid-stride loop). Pass 1: row sums of g = gamma[c]*dy and g*xhat;
// pass 2: dx. Thread t takes positions k = t, t + blockDim.x, ... both times.
// Launch: blockDim.x a multiple of 32, <= 1024; any grid; no dynamic shared memory.
extern "C" __global__ void rownorm_backward_v1(const T* dy, const T* x, const ACC* gamma, const ACC* mean,
                                               const ACC* rstd, T* dx, i64 R, i64 K, i64 S, i64 Cg, i64 groups,
                                               int center) {
    __shared__ ACC scratch[32];
    for (i64 r = blockIdx.x; r < R; r += gridDim.x) {                                    // range [0, R)
        const ACC mu = center ? mean[r] : ACC(0), rs = rstd[r];
        const i64 cbase = r % groups * Cg;
        ACC sg = 0, sgx = 0;
        for (i64 k = threadIdx.x; k < K; k += blockDim.x) {                               // range [0, K)
            const ACC g = load(dy[r * K + k]) * weight_at(gamma, cbase, k, S);
            sg += g;
            sgx += g * (load(x[r * K + k]) - mu) * rs;
        }
        const ACC mg = center ? block_sum(sg, scratch) / ACC(K) : ACC(0);                 // mean(g); [M6] has none
        const ACC mgx = block_sum(sgx, scratch) / ACC(K);                                 // mean(g*xhat)
        for (i64 k = threadIdx.x; k < K; k += blockDim.x) {                               // range [0, K)
            const ACC g = load(dy[r * K + k]) * weight_at(gamma, cbase, k, S);
            const ACC xh = (load(x[r * K + k]) - mu) * rs;                                // [E4] / [M3]
            store(&dx[r * K + k], rs * (g - mg - xh * mgx));                              // [E8] / [M6]
        }
    }
}

// v1 [E6] [E7] / [M5]: one block per channel c (block-uniform grid-stride over channels); thread t takes the
// channel's positions m = t, t + blockDim.x, ... of its N*S values -- element (n*C + c)*S + s with n = m / S,
// s = m % S, in row n*groups + c/Cg -- and block_sum adds the thread sums as a tree (a serial float sum of
// N*S terms loses the digits of a channel whose dgamma cancels to nearly 0).
// Launch: blockDim.x a multiple of 32, <= 1024; any grid; no dynamic shared memory; nothing zeroed.
extern "C" __global__ void rownorm_params_v1(const T* dy, const T* x, const ACC* mean, const ACC* rstd,
                                             ACC* dgamma, ACC* dbeta, i64 N, i64 C, i64 S, i64 Cg, i64 groups,
                                             int center) {
    __shared__ ACC scratch[32];
    for (i64 c = blockIdx.x; c < C; c += gridDim.x) {                                    // range [0, C)
        ACC dg = 0, db = 0;
        for (i64 m = threadIdx.x; m < N * S; m += blockDim.x) {                           // range [0, N*S)
            const i64 n = m / S, e = (n * C + c) * S + (m - n * S), r = n * groups + c / Cg;
            const ACC d = load(dy[e]);
            db += d;                                                                      // [E6]
            dg += d * (load(x[e]) - (center ? mean[r] : ACC(0))) * rstd[r];               // [E7] / [M5]
        }
        block_sums_to(dg, db, scratch, dgamma, dbeta, c);
    }
}

// v2: dx [E8] and the dgamma/dbeta partials [E6] [E7] from one DRAM read of dy and x (v1 read them four
// times). The second pass over a lane's VPT values re-reads them from L1/L2 a moment later: holding them in
// registers as well as the running sums needs more than the 64 registers a 1024-thread block allows.
// Team tg (a warp, or the whole block) owns group g, chunk ch and row set jt: tg = (jt*nch + ch)*groups + g,
// rows n = jt, jt + nt, ... < N (r = n*groups + g), lane l holds positions k = ch*VPT*team + l + j*team.
// All rows of a team share g, so a register slot j has the same channel in each of them: the lane keeps
// running sums of dy and dy*xhat per slot across its rows (no atomics). At the end the slots become
// part_db, part_dg (nt x C, entry jt*C + c, each written exactly once): S == 1, position k is channel
// g*Cg + k and the slot is the entry; S > 1 (then nch == 1), team_sum per channel ci of the group.
// Row sums for dx: nch == 1, the team reduces its registers; nch > 1 (S == 1, K > VPT*1024), a team sees
// one chunk and reads the row's nch sums written by rownorm_backward_sums_v2 (weighted) into row_a, row_b.
// Two kernels run this body (a compile-time team kind, so each compiles only its own reductions):
// rownorm_backward_v2 for block teams, rownorm_backward_v2_warp for warp teams in WARP_BLOCK-thread blocks.
// Launch: blockDim.x a multiple of 32, <= 1024 (warp teams: WARP_BLOCK); team = 32 or blockDim.x; VPT*team*nch >= K;
// nch > 1 only with S == 1 and blockDim.x = MAX_BLOCK (the chunk of backward_sums_v2); at least
// groups*nch*nt teams in the grid (extra teams leave at once, whole warps or whole blocks); nt <= N.
#define BACKWARD_V2_PARAMS const T* dy, const T* x, const ACC* gamma, const ACC* mean, const ACC* rstd, T* dx, \
    const ACC* row_a, const ACC* row_b, ACC* part_dg, ACC* part_db, i64 N, i64 K, i64 S, i64 Cg, i64 groups, \
    i64 nch, i64 nt, int center
#define BACKWARD_V2_ARGS dy, x, gamma, mean, rstd, dx, row_a, row_b, part_dg, part_db, N, K, S, Cg, groups, nch, nt, center

template <int warp_team>
__device__ __forceinline__ void backward_v2(BACKWARD_V2_PARAMS) {
    __shared__ ACC scratch[32];
    const int team = warp_team ? 32 : blockDim.x;
    const int lane = threadIdx.x % team;
    const i64 tg = (i64)blockIdx.x * (blockDim.x / team) + threadIdx.x / team;           // range [0, groups*nch*nt)
    if (tg >= groups * nch * nt) return;
    const i64 g = tg % groups, jt = tg / groups / nch, cbase = g * Cg;
    const int kl = (int)(tg / groups % nch) * VPT * team + lane;                          // the lane's first position
    ACC acc_db[VPT], acc_dg[VPT];
#pragma unroll
    for (int j = 0; j < VPT; j++) acc_db[j] = acc_dg[j] = ACC(0);
    for (i64 n = jt; n < N; n += nt) {                                                    // range [0, N), uniform in the team
        const i64 r = n * groups + g;
        const T* dyr = dy + r * K;
        const T* xr = x + r * K;
        const ACC mu = center ? mean[r] : ACC(0), rs = rstd[r];
        ACC sa = 0, sb = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const int k = kl + j * team;                                                  // range [kl, kl + VPT*team)
            if (k < K) {
                const ACC gv = load(dyr[k]) * weight_at(gamma, cbase, k, S);
                sa += gv;
                sb += gv * (load(xr[k]) - mu) * rs;                                       // g*xhat, [E4] / [M3]
            }
        }
        if (nch > 1) {
            sa = sb = ACC(0);
            for (i64 q = lane; q < nch; q += team) {                                      // range [0, nch)
                sa += row_a[r * nch + q];
                sb += row_b[r * nch + q];
            }
        }
        const ACC mg = center ? team_sum(sa, scratch, warp_team) / ACC(K) : ACC(0);      // mean(g); [M6] has none
        const ACC mgx = team_sum(sb, scratch, warp_team) / ACC(K);                        // mean(g*xhat)
        T* dxr = dx + r * K;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const int k = kl + j * team;
            if (k < K) {
                const ACC d = load(dyr[k]), xh = (load(xr[k]) - mu) * rs;                 // second read: L1/L2
                store(&dxr[k], rs * (d * weight_at(gamma, cbase, k, S) - mg - xh * mgx));  // [E8] / [M6]
                acc_db[j] += d;
                acc_dg[j] += d * xh;
            }
        }
    }
    ACC* pdb = part_db + jt * groups * Cg + cbase;                                        // entries (jt, c), c in group g
    ACC* pdg = part_dg + jt * groups * Cg + cbase;
    if (S == 1) {
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const int k = kl + j * team;
            if (k < K) {
                pdb[k] = acc_db[j];                                                       // [E6] partial
                pdg[k] = acc_dg[j];                                                       // [E7] / [M5] partial
            }
        }
    } else {
        int cj[VPT];                                                                      // channel of slot j in the group
#pragma unroll
        for (int j = 0; j < VPT; j++) cj[j] = kl + j * team < K ? (kl + j * team) / (int)S : -1;
        for (int ci = 0; ci < Cg; ci++) {                                                 // range [0, Cg), uniform in the team
            ACC a = 0, b = 0;
#pragma unroll
            for (int j = 0; j < VPT; j++) {
                if (cj[j] == ci) {
                    a += acc_db[j];
                    b += acc_dg[j];
                }
            }
            a = team_sum(a, scratch, warp_team);
            b = team_sum(b, scratch, warp_team);
            if (lane == 0) {
                pdb[ci] = a;
                pdg[ci] = b;
            }
        }
    }
}

// rownorm_backward_v2: block teams. __launch_bounds__(MAX_BLOCK) caps a thread at 64 registers.
extern "C" __global__ void __launch_bounds__(MAX_BLOCK) rownorm_backward_v2(BACKWARD_V2_PARAMS) {
    backward_v2<0>(BACKWARD_V2_ARGS);
}

// rownorm_backward_v2_warp: warp teams (K <= VPT*32). Why a kernel of its own: bounded at MAX_BLOCK, the
// warp-team launches were held to 64 registers too, and float64 spilled (492 bytes on sm_90); they run in
// WARP_BLOCK-thread blocks, which leave a thread up to 255 registers.
extern "C" __global__ void __launch_bounds__(WARP_BLOCK) rownorm_backward_v2_warp(BACKWARD_V2_PARAMS) {
    backward_v2<1>(BACKWARD_V2_ARGS);
}

// Long rows, sums: one block per item i = q*nch + ch adds a = w*dy and b = w*dy*xhat over positions
// p = ch*CH + t + j*blockDim.x < L of segment q (elements q*L + p), w = gamma[c] if weighted else 1, and
// writes sum_a[i], sum_b[i] (Q*nch values, all written). Two uses:
//   weighted, segments = rows (Q = R, L = K, S == 1): row sums for rownorm_backward_v2 with nch > 1;
//   unweighted, segments = (n, c) runs (Q = N*C, L = S, S > 1): the [E6] [E7] partials, nch = P per channel,
//   from which rownorm_backward_dx_split_v2 rebuilds the row sums.
// Segment q lies in row r = q*L / K from position kb = q*L - r*K (rows: q, 0; (n, c) runs: q/Cg, (q%Cg)*S).
// Launch: blockDim.x = MAX_BLOCK (CH = VPT*blockDim.x), nch = ceil(L / CH), any grid.
extern "C" __global__ void __launch_bounds__(MAX_BLOCK)
rownorm_backward_sums_v2(const T* dy, const T* x, const ACC* gamma, const ACC* mean, const ACC* rstd,
                         ACC* sum_a, ACC* sum_b, i64 Q, i64 L, i64 nch, i64 K, i64 S, i64 Cg, i64 groups,
                         int weighted, int center) {
    __shared__ ACC scratch[32];
    const i64 CH = (i64)VPT * blockDim.x;
    for (i64 i = blockIdx.x; i < Q * nch; i += gridDim.x) {                               // range [0, Q*nch)
        const i64 q = i / nch, p0 = i % nch * CH, e0 = q * L;
        const i64 r = e0 / K, kb = e0 - r * K, cbase = r % groups * Cg;
        const ACC mu = center ? mean[r] : ACC(0), rs = rstd[r];
        ACC a = 0, b = 0;
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 p = p0 + threadIdx.x + j * blockDim.x;                              // range [p0, p0 + CH)
            if (p < L) {
                const ACC w = weighted ? weight_at(gamma, cbase, kb + p, S) : ACC(1);
                const ACC d = load(dy[e0 + p]) * w;
                a += d;
                b += d * (load(x[e0 + p]) - mu) * rs;
            }
        }
        block_sums_to(a, b, scratch, sum_a, sum_b, i);
    }
}

// Long rows with S > 1 (InstanceNorm/GroupNorm on large images): dx [E8] for one chunk of a row per block,
// item i = r*nch + ch, positions k = ch*CH + t + j*blockDim.x. The row sums of g and g*xhat are
// sum over the group's channels of gamma[c] times the (n, c) partials of rownorm_backward_sums_v2 (P per
// channel): row r's Cg*P entries sit together at r*Cg*P, entry e has channel g*Cg + e/P; thread t takes
// e = t, t + blockDim.x, ... and block_sum adds in a fixed order, the same in every block of the row.
// Launch: blockDim.x = MAX_BLOCK (CH = VPT*blockDim.x), nch = ceil(K / CH), any grid.
extern "C" __global__ void __launch_bounds__(MAX_BLOCK)
rownorm_backward_dx_split_v2(const T* dy, const T* x, const ACC* gamma, const ACC* mean, const ACC* rstd, T* dx,
                             const ACC* seg_a, const ACC* seg_b, i64 R, i64 K, i64 S, i64 Cg, i64 groups, i64 P,
                             i64 nch) {
    __shared__ ACC scratch[32];
    const i64 CH = (i64)VPT * blockDim.x;
    for (i64 i = blockIdx.x; i < R * nch; i += gridDim.x) {                               // range [0, R*nch)
        const i64 r = i / nch, k0 = i % nch * CH, cbase = r % groups * Cg;
        const ACC mu = mean[r], rs = rstd[r];
        ACC sa = 0, sb = 0;
        for (i64 e = threadIdx.x; e < Cg * P; e += blockDim.x) {                          // range [0, Cg*P)
            const ACC w = weight(gamma, cbase + e / P);
            sa += w * seg_a[r * Cg * P + e];
            sb += w * seg_b[r * Cg * P + e];
        }
        const ACC mg = block_sum(sa, scratch) / ACC(K), mgx = block_sum(sb, scratch) / ACC(K);
#pragma unroll
        for (int j = 0; j < VPT; j++) {
            const i64 k = k0 + threadIdx.x + j * blockDim.x;                              // range [k0, k0 + CH)
            if (k < K) {
                const ACC xh = (load(x[r * K + k]) - mu) * rs;                            // [E4]
                const ACC g = load(dy[r * K + k]) * weight_at(gamma, cbase, k, S);
                store(&dx[r * K + k], rs * (g - mg - xh * mgx));                          // [E8]
            }
        }
    }
}

// Final [E6] [E7] / [M5]: dgamma[c] = sum over m in [0, M), p in [0, P) of part_dg[(m*C + c)*P + p]; dbeta
// from part_db the same way. A block is 32 rows of 32 lanes: lane tx takes channel c = blockIdx.x*32 + tx
// (coalesced when P == 1), row ty takes m = ty, ty + 32, ... with p in order inside; the 32 row sums of a
// channel are then added in the order ty = 0..31. Fixed order throughout: bitwise reproducible.
// Launch: blockDim.x = 1024, gridDim.x = ceil(C / 32); 2*32*32 ACC of static shared memory; nothing zeroed.
extern "C" __global__ void __launch_bounds__(1024)
rownorm_params_reduce_v2(const ACC* part_dg, const ACC* part_db, ACC* dgamma, ACC* dbeta, i64 M, i64 C, i64 P) {
    __shared__ ACC sdg[32][32], sdb[32][32];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const i64 c = (i64)blockIdx.x * 32 + tx;                                              // range [0, C)
    ACC dg = 0, db = 0;
    if (c < C) {
        for (i64 m = ty; m < M; m += 32) {                                                // range [0, M)
            for (i64 p = 0; p < P; p++) {                                                 // range [0, P)
                dg += part_dg[(m * C + c) * P + p];
                db += part_db[(m * C + c) * P + p];
            }
        }
    }
    sdg[ty][tx] = dg;
    sdb[ty][tx] = db;
    __syncthreads();                 // the 32 row sums of every channel of the block are in shared memory
    if (ty == 0 && c < C) {
        dg = db = ACC(0);
        for (int i = 0; i < 32; i++) {
            dg += sdg[i][tx];
            db += sdb[i][tx];
        }
        dgamma[c] = dg;                                                                   // [E7] / [M5]
        dbeta[c] = db;                                                                    // [E6]
    }
}
