"""The functional API on raw arrays, each result checked against the formula written out in NumPy.

    python examples/functional_api.py

``cubn.nn.functional`` has PyTorch's functions with PyTorch's argument order (``batch_norm``,
``layer_norm``, ``group_norm``, ``rms_norm``, ...). They take plain NumPy (or CuPy) arrays as well
as Tensors and return Tensors. Nothing here needs a Module: these are the functions the layers call.

Each section computes one normalization with cubn, computes the same thing from its definition in
a few lines of NumPy, and prints the largest difference. Everything is float64, so agreement is to
rounding (around 1e-15); in float32 expect around 1e-6. Shown along the way:

1. ``batch_norm`` in training mode updates the running-statistics arrays you pass *in place*
   (PyTorch's momentum convention: new = 0.9 * old + 0.1 * batch, with the *unbiased* batch
   variance), while the output is normalized with the *biased* one; in eval mode
   (``training=False``) it uses the running statistics instead of the batch's.
2. ``layer_norm`` normalizes each row over the trailing ``normalized_shape``, ``group_norm`` each
   sample over groups of channels, ``rms_norm`` divides by the root mean square without centering.
3. Gradients: wrap inputs in ``cubn.tensor(..., requires_grad=True)``, call ``backward`` on a
   scalar, read ``.grad``. BatchNorm's input gradient is checked against the closed form from the
   Batch Norm paper, and dgamma / dbeta against their sums; GroupNorm's gradient against a
   central finite difference.
"""
import sys
from pathlib import Path

import numpy

try:
    import cubn
except ImportError:   # run from a checkout without `pip install .`: use the cubn next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import cubn

from cubn import backend
from cubn.nn import functional as F

EPS = 1e-5


def max_diff(a, b):
    """Largest absolute difference between two arrays (Tensors are unwrapped, CuPy arrays brought to the host)."""
    a = backend.to_numpy(a.data if isinstance(a, cubn.Tensor) else a)
    b = backend.to_numpy(b.data if isinstance(b, cubn.Tensor) else b)
    return float(numpy.abs(a - b).max())


def batch_norm_section(xp, rng, log):
    x = xp.asarray(rng.normal(3.0, 2.0, (8, 4, 5, 5)))          # N=8, C=4, 5x5: 200 values per channel
    weight, bias = xp.asarray(rng.normal(1, 0.1, 4)), xp.asarray(rng.normal(0, 0.1, 4))
    running_mean, running_var = xp.zeros(4), xp.ones(4)

    y = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=EPS)

    # by hand: statistics per channel over (N, H, W)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))                                  # biased: divides by n
    n = x.size // x.shape[1]
    c = (1, -1, 1, 1)                                            # broadcast a (C,) vector over (N, C, H, W)
    want = (x - mean.reshape(c)) / xp.sqrt(var.reshape(c) + EPS) * weight.reshape(c) + bias.reshape(c)
    errors = {"batch_norm train output": max_diff(y, want),
              "running_mean update": max_diff(running_mean, 0.9 * 0 + 0.1 * mean),
              "running_var update (unbiased)": max_diff(running_var, 0.9 * 1 + 0.1 * var * n / (n - 1))}
    log(f"batch_norm: batch mean per channel {numpy.round(backend.to_numpy(mean), 3)}, "
        f"running_mean after one step {numpy.round(backend.to_numpy(running_mean), 3)} (arrays updated in place)")

    y_eval = F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=EPS)
    want_eval = ((x - running_mean.reshape(c)) / xp.sqrt(running_var.reshape(c) + EPS) * weight.reshape(c)
                 + bias.reshape(c))
    errors["batch_norm eval output"] = max_diff(y_eval, want_eval)
    log(f"batch_norm eval uses the running statistics: output mean {float(y_eval.data.mean()):.3f} against "
        f"training mode's {float(y.data.mean()):.3f}, because after one step the running mean has moved only "
        "10% of the way to the batch mean (momentum 0.1)")
    return errors


def row_norms_section(xp, rng, log):
    errors = {}
    tokens = xp.asarray(rng.normal(0, 3, (2, 6, 16)))            # (batch, sequence, features)
    w, b = xp.asarray(rng.normal(1, 0.1, 16)), xp.asarray(rng.normal(0, 0.1, 16))
    y = F.layer_norm(tokens, (16,), w, b, eps=EPS)
    mu, var = tokens.mean(axis=-1, keepdims=True), tokens.var(axis=-1, keepdims=True)
    errors["layer_norm"] = max_diff(y, (tokens - mu) / xp.sqrt(var + EPS) * w + b)

    images = xp.asarray(rng.normal(1, 2, (3, 8, 4, 4)))          # 8 channels in 4 groups of 2
    gw, gb = xp.asarray(rng.normal(1, 0.1, 8)), xp.asarray(rng.normal(0, 0.1, 8))
    y = F.group_norm(images, 4, gw, gb, eps=EPS)
    groups = images.reshape(3, 4, -1)                            # each row: one sample's group, 2 x 4 x 4 values
    normed = (groups - groups.mean(axis=-1, keepdims=True)) / xp.sqrt(groups.var(axis=-1, keepdims=True) + EPS)
    errors["group_norm"] = max_diff(y, normed.reshape(images.shape) * gw.reshape(1, -1, 1, 1) + gb.reshape(1, -1, 1, 1))

    y = F.rms_norm(tokens, (16,), w, eps=EPS)
    errors["rms_norm"] = max_diff(y, tokens / xp.sqrt((tokens ** 2).mean(axis=-1, keepdims=True) + EPS) * w)
    plain = F.layer_norm(tokens, (16,)).data                      # no affine: the normalized rows themselves
    log(f"layer_norm over the last {tokens.shape[-1]} features: every row now has |mean| <= "
        f"{float(abs(plain.mean(axis=-1)).max()):.1e} and variance {float(plain.var(axis=-1).mean()):.4f}")
    return errors


def gradients_section(xp, rng, log):
    errors = {}
    x_np = rng.normal(0.5, 1.5, (16, 3))                         # (N, C): 16 values per channel
    x = cubn.tensor(xp.asarray(x_np), requires_grad=True)
    gamma = cubn.tensor(xp.asarray(rng.normal(1, 0.2, 3)), requires_grad=True)
    beta = cubn.tensor(xp.zeros(3), requires_grad=True)
    dy = xp.asarray(rng.normal(0, 1, (16, 3)))                   # a random upstream gradient: loss = sum(y * dy)

    y = F.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)
    (y * dy).sum().backward()

    # the Batch Norm paper's backward, per channel, with xhat the normalized input:
    # dx = gamma * rstd / N * (N * dy - sum(dy) - xhat * sum(dy * xhat))
    xd = x.data
    n = xd.shape[0]
    rstd = 1 / xp.sqrt(xd.var(axis=0) + EPS)
    xhat = (xd - xd.mean(axis=0)) * rstd
    dx = gamma.data * rstd / n * (n * dy - dy.sum(axis=0) - xhat * (dy * xhat).sum(axis=0))
    errors["batch_norm dx"] = max_diff(x.grad, dx)
    errors["batch_norm dgamma = sum(dy * xhat)"] = max_diff(gamma.grad, (dy * xhat).sum(axis=0))
    errors["batch_norm dbeta = sum(dy)"] = max_diff(beta.grad, dy.sum(axis=0))
    log(f"batch_norm backward: dx sums to {float(abs(x.grad.sum(axis=0)).max()):.1e} per channel "
        "(shifting a channel's input changes nothing after BN, so its gradient has no mean)")

    # GroupNorm: a central finite difference of loss(x) = sum(group_norm(x) * dy) in a few coordinates
    images = cubn.tensor(xp.asarray(rng.normal(0, 1, (2, 4, 3, 3))), requires_grad=True)
    dy = xp.asarray(rng.normal(0, 1, (2, 4, 3, 3)))
    (F.group_norm(images, 2, eps=EPS) * dy).sum().backward()

    def loss(a):
        return float((F.group_norm(a, 2, eps=EPS).data * dy).sum())

    h, worst = 1e-6, 0.0
    for index in [(0, 0, 0, 0), (0, 3, 2, 1), (1, 1, 1, 1), (1, 2, 0, 2)]:
        plus, minus = images.data.copy(), images.data.copy()
        plus[index] += h
        minus[index] -= h
        numeric = (loss(plus) - loss(minus)) / (2 * h)
        worst = max(worst, abs(numeric - float(images.grad[index])))
    errors["group_norm dx vs finite differences"] = worst
    return errors


def main(quick=False, device=None, log=print):
    """Run every check and print them; returns {check name: largest absolute difference}.

    ``quick`` changes nothing (the script takes well under a second); it is here for the test's sake.
    """
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    xp = backend.cupy if device == "cuda" else numpy
    rng = numpy.random.default_rng(0)
    log(f"arrays: {xp.__name__} float64 (device {device})\n")
    errors = {}
    for section in (batch_norm_section, row_norms_section, gradients_section):
        errors.update(section(xp, rng, log))
    log("\nlargest |cubn - NumPy formula|:")
    for name, err in errors.items():
        log(f"  {name:40s} {err:.1e}")
    exact = max(err for name, err in errors.items() if "finite" not in name)
    log(f"formulas agree to {exact:.1e} (float64 rounding); finite differences to "
        f"{errors['group_norm dx vs finite differences']:.1e} (their own error is about 1e-9)")
    return errors


if __name__ == "__main__":
    main()
