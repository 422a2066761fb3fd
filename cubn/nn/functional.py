"""The functional API, with PyTorch's argument names and order where PyTorch has the function.

Conventions (the same as the modules'):

* channel axis 1 (NCHW); ``eps`` (default 1e-5) must be finite and >= 0;
* normalization uses the biased batch variance; running variance is updated
  with the unbiased one, n/(n-1) with n the number of values per statistic;
* ``momentum`` has PyTorch's meaning: ``new = (1 - momentum) * old + momentum * batch``;
* running statistics are updated in place, on their raw arrays, outside the tape;
* an empty batch gives an empty output of the same shape and leaves running
  statistics untouched.

Inputs may be Tensors or raw NumPy/CuPy arrays; outputs are Tensors.
"""
import contextlib

import numpy

from ..backend import get_array_module
from ..ops import math as _math
from ..ops.norm import BatchNormEval, BatchNormTrain, BatchRenormTrain, RMSNorm, RowNorm
from .checks import (array_of, check_count, check_eps, check_fraction, check_input, check_shaped,
                     check_vector, normalized_shape_of)
from .conv import conv2d
from .layers import dropout, gelu, leaky_relu, silu
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

relu = _math.relu
sigmoid = _math.sigmoid
tanh = _math.tanh
softmax = _math.softmax
log_softmax = _math.log_softmax
cross_entropy = _math.cross_entropy


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias, with weight of shape (out_features, in_features)."""
    y = input @ weight.transpose()
    return y if bias is None else y + bias


def _channel_view(x):
    """(N, C, S): the kernel view of an (N, C, *spatial) input; S = 1 for (N, C)."""
    return (x.shape[0], x.shape[1], int(numpy.prod(x.shape[2:], dtype=numpy.int64)))


def _channel_args(input, min_ndim, vectors, eps, momentum):
    """Check an (N, C, *spatial) input, its (C,) vectors (name -> value), eps and momentum.

    Returns (x as a Tensor, its (N, C, S) view, eps, momentum).
    """
    x = check_input(input, min_ndim=min_ndim)
    view = _channel_view(x)
    for name, v in vectors.items():
        check_vector(v, view[1], name, x)
    return x, view, check_eps(eps), check_fraction(momentum, "momentum")


def _with_running_stats(x, view, weight, bias, running_mean, running_var, eps, who):
    """Normalize per channel with given statistics (BN eval, InstanceNorm without input stats)."""
    if running_mean is None or running_var is None:
        raise ValueError(f"{who} needs running_mean and running_var")
    return BatchNormEval.apply(x, weight, bias, view=view, mean=array_of(running_mean),
                               var=array_of(running_var), eps=eps)


_stats_frozen_depth = 0


@contextlib.contextmanager
def no_stats_update():
    """Inside this block no running statistic changes (and no layer counts a batch).

    ``cubn.checkpoint`` recomputes a forward pass with it, so running statistics are updated once.
    """
    global _stats_frozen_depth
    _stats_frozen_depth += 1
    try:
        yield
    finally:
        _stats_frozen_depth -= 1


def stats_updates_enabled():
    """False inside ``no_stats_update()``."""
    return _stats_frozen_depth == 0


def _update(running, batch, momentum):
    """running <- (1 - momentum) * running + momentum * batch, in place, in the buffer's dtype."""
    if not stats_updates_enabled():
        return
    r = array_of(running)
    r *= 1 - momentum
    r += momentum * batch.astype(r.dtype, copy=False)


def _check_training_batch(x, values, what):
    if values == 1:
        raise ValueError(f"Expected more than 1 {what} when training, got input of shape {tuple(x.shape)}")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch Normalization (Ioffe & Szegedy 2015) over (N, *spatial) per channel of (N, C, *spatial).

    training=True normalizes with the batch statistics and, when running
    buffers are given, updates them in place (biased variance for the output,
    unbiased for ``running_var``). training=False uses ``running_mean`` and
    ``running_var``, which are then required. One value per channel in training
    is a ValueError, as in PyTorch.
    """
    x, view, eps, momentum = _channel_args(input, 2, dict(running_mean=running_mean, running_var=running_var,
                                                          weight=weight, bias=bias), eps, momentum)
    if not training:
        return _with_running_stats(x, view, weight, bias, running_mean, running_var, eps,
                                   "batch_norm with training=False")
    n = view[0] * view[2]
    _check_training_batch(x, n, "value per channel")
    y, fn = BatchNormTrain.run(x, weight, bias, view=view, eps=eps)
    if fn.mean is not None:
        if running_mean is not None:
            _update(running_mean, fn.mean, momentum)
        if running_var is not None:
            _update(running_var, fn.var * (n / (n - 1)), momentum)
    return y


def batch_renorm(input, running_mean, running_std, weight=None, bias=None, training=False,
                 rmax=3.0, dmax=5.0, momentum=0.01, eps=1e-5):
    """Batch Renormalization (Ioffe 2017, arXiv:1702.03275) per channel of (N, C, *spatial).

    Training: sigma_B = sqrt(var_B + eps) (biased variance),
    r = clip(sigma_B / running_std, 1/rmax, rmax), d = clip((mean_B - running_mean) / running_std, -dmax, dmax),
    y = gamma * ((x - mean_B) / sigma_B * r + d) + beta, with r and d constants for the gradient.
    The moving statistics are the paper's, updated in place:
    ``running_mean += momentum * (mean_B - running_mean)``, ``running_std += momentum * (sigma_B - running_std)``.
    Eval: y = gamma * (x - running_mean) / running_std + beta. rmax=1, dmax=0 is exactly batch_norm.
    ``running_std`` must be positive.
    """
    if running_mean is None or running_std is None:
        raise ValueError("batch_renorm needs running_mean and running_std (r and d are computed from them)")
    x, view, eps, momentum = _channel_args(input, 2, dict(running_mean=running_mean, running_std=running_std,
                                                          weight=weight, bias=bias), eps, momentum)
    rmax, dmax = check_renorm_limits(rmax, dmax)
    rm, rs = array_of(running_mean), array_of(running_std)
    if not training:
        return BatchNormEval.apply(x, weight, bias, view=view, mean=rm, var=rs * rs, eps=0.0)
    _check_training_batch(x, view[0] * view[2], "value per channel")
    y, fn = BatchRenormTrain.run(x, weight, bias, view=view, running_mean=rm, running_std=rs,
                                 rmax=rmax, dmax=dmax, eps=eps)
    if fn.mean is not None:
        _update(rm, fn.mean, momentum)
        _update(rs, get_array_module(fn.var).sqrt(fn.var + eps), momentum)
    return y


def check_renorm_limits(rmax, dmax):
    """rmax >= 1 and dmax >= 0, both finite (rmax=1, dmax=0 is plain BN)."""
    if isinstance(rmax, bool) or not isinstance(rmax, (int, float)) or not 1 <= rmax < float("inf"):
        raise ValueError(f"rmax must be a finite number >= 1, got {rmax!r}")
    if isinstance(dmax, bool) or not isinstance(dmax, (int, float)) or not 0 <= dmax < float("inf"):
        raise ValueError(f"dmax must be a finite number >= 0, got {dmax!r}")
    return float(rmax), float(dmax)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Instance Normalization (Ulyanov et al. 2016): each (n, c) over its spatial values.

    With ``use_input_stats`` and running buffers given, they are updated with
    the batch average of the per-instance mean and unbiased variance, as in
    PyTorch. ``use_input_stats=False`` normalizes with the running statistics.
    One spatial element with use_input_stats is a ValueError.
    """
    x, view, eps, momentum = _channel_args(input, 3, dict(running_mean=running_mean, running_var=running_var,
                                                          weight=weight, bias=bias), eps, momentum)
    N, C, S = view
    if not use_input_stats:
        return _with_running_stats(x, view, weight, bias, running_mean, running_var, eps,
                                   "instance_norm with use_input_stats=False")
    _check_training_batch(x, S, "spatial element")
    y, fn = RowNorm.run(x, weight, bias, view=view, groups=C, eps=eps)
    if fn.mean is not None:
        var = (1 / (fn.rstd * fn.rstd) - eps).clip(0)  # per (n, c), biased
        if running_mean is not None:
            _update(running_mean, fn.mean.mean(axis=0), momentum)
        if running_var is not None:
            _update(running_var, (var * (S / (S - 1))).mean(axis=0), momentum)
    return y


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Group Normalization (Wu & He 2018): each sample's C/G channels of a group normalized together.

    input (N, C, *spatial) with C divisible by ``num_groups``; affine per channel.
    G=1 is LayerNorm over (C, *spatial) with per-channel affine; G=C is InstanceNorm.
    """
    x = check_input(input, min_ndim=2)
    view = _channel_view(x)
    C = view[1]
    G = check_count(num_groups, "num_groups")
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels, got C={C} (input shape {tuple(x.shape)})")
    check_vector(weight, C, "weight", x)
    check_vector(bias, C, "bias", x)
    return RowNorm.apply(x, weight, bias, view=view, groups=G, eps=check_eps(eps))


def _rows_view(x, normalized_shape):
    shape = normalized_shape_of(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(f"normalized_shape={shape} must match the trailing dimensions of input, "
                         f"got input of shape {tuple(x.shape)}")
    K = int(numpy.prod(shape, dtype=numpy.int64))
    return shape, (x.size // K if K else 0, K)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer Normalization (Ba et al. 2016) over the trailing ``normalized_shape``; affine per element."""
    x = check_input(input)
    shape, (R, K) = _rows_view(x, normalized_shape)
    check_shaped(weight, shape, "weight", x)
    check_shaped(bias, shape, "bias", x)
    return RowNorm.apply(x, weight, bias, view=(R, K, 1), groups=1, eps=check_eps(eps))


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * weight over ``normalized_shape``.

    ``eps=None`` uses the machine epsilon of the input's dtype, as PyTorch does.
    """
    x = check_input(input)
    shape, view = _rows_view(x, normalized_shape)
    check_shaped(weight, shape, "weight", x)
    eps = float(numpy.finfo(x.dtype).eps) if eps is None else check_eps(eps)
    return RMSNorm.apply(x, weight, view=view, eps=eps)


__all__ = ["batch_norm", "batch_renorm", "instance_norm", "group_norm", "layer_norm", "rms_norm",
           "linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "cross_entropy",
           "check_renorm_limits", "no_stats_update", "stats_updates_enabled", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "leaky_relu",
           "gelu", "silu", "dropout"]
