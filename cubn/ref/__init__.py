"""The NumPy twin of the kernel API.

Every module here has a CUDA twin in ``cubn/cuda`` with the same function
names and signatures (a test checks this), and a compiled-loop twin in
``cubn/jit`` (Numba; what NumPy arrays run on when it is installed). The code
is written against ``xp = get_array_module(x)``, so it runs on NumPy arrays (the
test oracle, and the CPU path without Numba) and on CuPy arrays (a kernel-free
GPU baseline).

Shapes and dtypes, shared by every function:

* ``x``, ``dy`` are C-contiguous; the ops layer reshapes user tensors to the
  views named below. float16, float32 and float64 are accepted.
* Statistics are accumulated in, and returned as, the accumulation dtype:
  float64 for float64 input, float32 otherwise (``acc_dtype``).
* ``gamma``/``beta`` are arrays of the accumulation dtype or None (meaning 1
  and 0). Backward always returns dgamma and dbeta as arrays.
* ``y`` and ``dx`` have the input's dtype.
* Non-finite input: a channel (BatchNorm) or row (rownorm) that holds an inf
  or a NaN gets NaN mean, var and rstd, so NaN outputs and gradients; other
  channels and rows are unaffected. (The twins' plain mean of a +inf is +inf,
  but the kernels' merged shifted partials cannot tell +inf from NaN, so both
  report NaN.) RMSNorm has no mean: its rrms follows the formula.
* Training-mode functions need at least one element per statistic; the ops
  layer handles empty batches and raises for single-value statistics before
  calling them.

batchnorm.py      x: (N, C, S), one statistic per channel over M = N*S values
    batchnorm_forward(x, gamma, beta, eps) -> (y, mean, var, rstd)
    batchnorm_backward(dy, x, gamma, mean, rstd) -> (dx, dgamma, dbeta)
    batchnorm_inference(x, gamma, beta, mean, var, eps) -> y
    batchnorm_inference_backward(dy, x, gamma, mean, var, eps) -> (dx, dgamma, dbeta)
  the phases of forward and backward, for statistics merged across processes (SyncBatchNorm):
    batchnorm_stats(x, eps) -> (mean, var, rstd)                          this x's own statistics
    batchnorm_normalize(x, gamma, beta, mean, rstd) -> y                 with given mean, rstd
    batchnorm_param_grads(dy, x, mean, rstd) -> (dgamma, dbeta)          this x's own sums
    batchnorm_dx(dy, x, gamma, mean, rstd, dgamma, dbeta, count) -> dx   sums over all count values
batchrenorm.py    x: (N, C, S); r and d are constants for backward
    batchrenorm_forward(x, gamma, beta, running_mean, running_std, rmax, dmax, eps)
        -> (y, mean, var, rstd, r, d)
    batchrenorm_backward(dy, x, gamma, mean, rstd, r, d) -> (dx, dgamma, dbeta)
rownorm.py        x: (N, C, S), rows (n, g) of K = (C/groups)*S contiguous values, affine per channel
    rownorm_forward(x, gamma, beta, groups, eps) -> (y, mean, rstd)       mean, rstd: (N, groups)
    rownorm_backward(dy, x, gamma, mean, rstd, groups) -> (dx, dgamma, dbeta)
rmsnorm.py        x: (R, K), affine per element of a row
    rmsnorm_forward(x, gamma, eps) -> (y, rrms)                            rrms: (R,)
    rmsnorm_backward(dy, x, gamma, rrms) -> (dx, dgamma)

Equation tags ``[E#]`` in each file match the CUDA twin in ``kernels/``.
"""
