"""The functional API, with PyTorch's argument names and order where PyTorch has the function.

Conventions (the same as the modules'):

* channel axis 1 (NCHW); ``eps`` (default 1e-5) must be finite and >= 0;
* normalization uses the biased batch variance; running variance is updated
  with the unbiased one, n/(n-1) with n the number of values per statistic
  (``running_var_estimator="biased"`` folds in the biased one instead, as Keras and Flax do);
* ``momentum`` has PyTorch's meaning: ``new = (1 - momentum) * old + momentum * batch``;
  ``decay=`` is the alternative spelling of Keras/Chainer/Flax: ``new = decay * old + (1 - decay) * batch``;
* running statistics are updated in place, on their raw arrays, outside the tape,
  and never inside ``no_stats_update()``;
* ``nonfinite`` decides what a batch whose statistics hold NaN/Inf does to the running
  buffers: "skip" (default: leave every buffer as it was), "raise" (FloatingPointError),
  "propagate" (fold it in, as PyTorch does);
* ``degenerate`` decides what a training batch with one value per statistic does:
  "raise" (default, as PyTorch), "use_running" (normalize with the running statistics),
  "skip_update" (normalize with the batch statistics, update nothing);
* ``mask=`` (batch_norm, group_norm, layer_norm): statistics over the valid entries only
  (True = valid); the output is 0 at masked positions, and so is the gradient there;
* an empty batch gives an empty output of the same shape and leaves running
  statistics untouched.

docs/normalization-policies.md has the tables and examples. Inputs may be Tensors
or raw NumPy/CuPy arrays; outputs are Tensors.
"""
import contextlib

import numpy

from .. import backend
from ..backend import get_array_module
from ..ops import math as _math
from ..ops.norm import BatchNormEval, BatchNormTrain, BatchRenormTrain, PhasedBatchNorm, RMSNorm, RowNorm
from . import masked as _masked
from .checks import (UNSET, array_of, check_choice, check_count, check_eps, check_fraction, check_input,
                     check_momentum, check_shaped, check_vector, normalized_shape_of)
from .conv import conv2d
from .layers import dropout, gelu, leaky_relu, mse_loss, nll_loss, silu
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

relu = _math.relu
sigmoid = _math.sigmoid
tanh = _math.tanh
softmax = _math.softmax
log_softmax = _math.log_softmax
cross_entropy = _math.cross_entropy

NONFINITE_POLICIES = ("skip", "raise", "propagate")
DEGENERATE_POLICIES = ("raise", "use_running", "skip_update")
VAR_ESTIMATORS = ("unbiased", "biased")

# A training call returns what it did to the running statistics, and the modules count batches
# with it: None (nothing to fold in: eval, empty or fully masked batch, updates off, skip_update),
# or a 0-d bool array on the buffers' device, True when the batch was folded in and False when
# nonfinite="skip" kept it out. An array, not a Python bool, so that on the GPU the decision and
# the counting stay on the device: reading a flag back would wait for every queued kernel.


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias, with weight of shape (out_features, in_features)."""
    x = check_input(input, min_ndim=1, layer="linear")
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input's last dimension must be in_features = {weight.shape[-1]}, "
                         f"got input of shape {tuple(x.shape)}")
    y = x @ weight.T
    return y if bias is None else y + bias


def _channel_view(x):
    """(N, C, S): the kernel view of an (N, C, *spatial) input; S = 1 for (N, C)."""
    return (x.shape[0], x.shape[1], int(numpy.prod(x.shape[2:], dtype=numpy.int64)))


def _channel_args(input, min_ndim, vectors, eps):
    """Check an (N, C, *spatial) input, its (C,) vectors (name -> value) and eps.

    Returns (x as a Tensor, its (N, C, S) view, eps).
    """
    x = check_input(input, min_ndim=min_ndim)
    view = _channel_view(x)
    for name, v in vectors.items():
        check_vector(v, view[1], name, x)
    return x, view, check_eps(eps)


def _check_policies(nonfinite="skip", degenerate="raise", estimator="unbiased"):
    check_choice(nonfinite, "nonfinite", NONFINITE_POLICIES)
    check_choice(degenerate, "degenerate", DEGENERATE_POLICIES)
    check_choice(estimator, "running_var_estimator", VAR_ESTIMATORS)


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
    Whatever the ``nonfinite`` and ``degenerate`` policies, nothing is folded in, counted or
    checked here (a recomputed batch was checked the first time).
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


# ---- folding batch statistics into running buffers ---------------------------------------
def _all_finite(arrays):
    """A 0-d bool array: no value of ``arrays`` is NaN or Inf (one reduction, left on the device)."""
    xp = get_array_module(arrays[0])
    return xp.isfinite(xp.concatenate([a.reshape(-1) for a in arrays])).all()


def _nonfinite_message(arrays, who):
    bad = sorted({int(c) for a in arrays for c in numpy.flatnonzero(~numpy.isfinite(backend.to_numpy(a)))})
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    return (f"{who}: the batch statistics are NaN or Inf in channel(s) {shown}; the running statistics were "
            f"left unchanged. Look for NaN/Inf in this layer's input (or an exploding loss), or pass "
            f"nonfinite='skip' to skip such batches or 'propagate' to fold them in as PyTorch does.")


def _fold_running(pairs, momentum, nonfinite, who):
    """running <- (1 - momentum) * running + momentum * batch for each (running buffer, batch statistic).

    Buffers that are None are left out. Returns None (nothing to update) or the 0-d bool
    array "folded in" (see the comment above ``linear``). With nonfinite "skip" or "raise"
    every statistic is checked first, so a NaN or Inf in any channel leaves ALL buffers as
    they were: a half-applied batch would leave channels that have seen different numbers of
    batches (and break momentum=None's 1/k weights). "skip" selects old or new values with
    ``where`` on the device instead of branching on the host; "raise" must read the flag back.
    """
    pairs = [(array_of(r), b) for r, b in pairs if r is not None]
    if not pairs or not stats_updates_enabled():
        return None
    xp = get_array_module(pairs[0][0])
    batch = [b.astype(r.dtype, copy=False) for r, b in pairs]  # what would enter each buffer
    if nonfinite == "propagate":
        ok = xp.ones((), dtype=bool)
    else:
        ok = _all_finite(batch)
        if nonfinite == "raise" and not bool(ok):
            raise FloatingPointError(_nonfinite_message(batch, who))
    for (r, _), b in zip(pairs, batch, strict=True):
        new = r * (1 - momentum) + momentum * b
        r[...] = new if nonfinite != "skip" else xp.where(ok, new, r)
    return ok


def _degenerate_action(count, policy, x, what, who, masked=False):
    """What to do with a training batch of ``count`` values per statistic.

    Returns "batch" (the normal case), "running" (normalize with the running statistics)
    or "no_update" (normalize with the batch statistics, fold nothing in). One value per
    statistic makes the batch variance 0 and the output beta whatever the input, so by
    default it is an error, as in PyTorch.
    """
    if count != 1:
        return "batch"
    if policy == "raise":
        valid = " unmasked" if masked else ""
        raise ValueError(f"{who}: Expected more than 1{valid} {what} when training, got input of shape "
                         f"{tuple(x.shape)} (degenerate='use_running' or 'skip_update' accept such batches)")
    return "running" if policy == "use_running" else "no_update"


def _masked_output(y, mask):
    return y if mask is None else _masked.zero_masked_channels(y, mask)


# ---- batch norm ---------------------------------------------------------------------------
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=UNSET, eps=1e-5, *, decay=None, running_var_estimator="unbiased",
               nonfinite="skip", degenerate="raise", mask=None):
    """Batch Normalization (Ioffe & Szegedy 2015) over (N, *spatial) per channel of (N, C, *spatial).

    training=True normalizes with the batch statistics and, when running
    buffers are given, updates them in place (biased variance for the output,
    unbiased for ``running_var`` unless ``running_var_estimator="biased"``).
    training=False uses ``running_mean`` and ``running_var``, which are then required.

    ``momentum`` (default 0.1, PyTorch's meaning) or ``decay`` (Keras/Flax meaning,
    ``momentum = 1 - decay``), not both. ``nonfinite``, ``degenerate`` and ``mask``:
    see the module docstring. With ``mask`` (bool, broadcastable to (N, *spatial),
    True = valid), n in the unbiased factor is the number of valid values per channel;
    a batch with no valid value updates nothing.
    """
    momentum, _ = check_momentum(momentum, decay, default=0.1)
    return _batch_norm(input, running_mean, running_var, weight, bias, training=training, update=True,
                       momentum=momentum, eps=eps, estimator=running_var_estimator, nonfinite=nonfinite,
                       degenerate=degenerate, mask=mask, who="batch_norm")[0]


def _batch_norm(input, running_mean, running_var, weight, bias, *, training, update, momentum, eps,
                estimator, nonfinite, degenerate, mask, who):
    """batch_norm for the modules: returns (y, "folded in" flag or None); ``update=False`` folds nothing in."""
    x, view, eps = _channel_args(input, 2, dict(running_mean=running_mean, running_var=running_var,
                                                weight=weight, bias=bias), eps)
    momentum = check_fraction(momentum, "momentum")
    _check_policies(nonfinite, degenerate, estimator)
    if not training:
        y = _with_running_stats(x, view, weight, bias, running_mean, running_var, eps,
                                f"{who} with training=False")
        return _masked_output(y, mask), None
    n = view[0] * view[2] if mask is None else _masked.valid_count(mask, x)
    action = _degenerate_action(n, degenerate, x, "value per channel", who, masked=mask is not None)
    if action == "running":
        y = _with_running_stats(x, view, weight, bias, running_mean, running_var, eps,
                                f"{who} with degenerate='use_running'")
        return _masked_output(y, mask), None
    if mask is None:
        y, fn = BatchNormTrain.run(x, weight, bias, view=view, eps=eps)
    else:
        y, fn = PhasedBatchNorm.run(x.reshape(view), weight, bias, eps=eps, mask=_masked.channel_mask(mask, x))
        y = y.reshape(x.shape)
    mean, var = fn.mean, fn.var
    if not update or action == "no_update" or mean is None or n == 0:
        return y, None
    if estimator == "unbiased":
        var = var * (n / (n - 1))
    return y, _fold_running([(running_mean, mean), (running_var, var)], momentum, nonfinite, who)


# ---- batch renorm -------------------------------------------------------------------------
def batch_renorm(input, running_mean, running_std, weight=None, bias=None, training=False,
                 rmax=3.0, dmax=5.0, momentum=UNSET, eps=1e-5, *, decay=None, nonfinite="skip",
                 degenerate="raise"):
    """Batch Renormalization (Ioffe 2017, arXiv:1702.03275) per channel of (N, C, *spatial).

    Training: sigma_B = sqrt(var_B + eps) (biased variance),
    r = clip(sigma_B / running_std, 1/rmax, rmax), d = clip((mean_B - running_mean) / running_std, -dmax, dmax),
    y = gamma * ((x - mean_B) / sigma_B * r + d) + beta, with r and d constants for the gradient.
    The moving statistics are the paper's, updated in place:
    ``running_mean += momentum * (mean_B - running_mean)``, ``running_std += momentum * (sigma_B - running_std)``
    (``momentum`` default 0.01, or ``decay = 1 - momentum``).
    Eval: y = gamma * (x - running_mean) / running_std + beta. rmax=1, dmax=0 is exactly batch_norm.
    ``running_std`` must be positive. ``nonfinite`` and ``degenerate``: see the module docstring.
    """
    momentum, _ = check_momentum(momentum, decay, default=0.01)
    return _batch_renorm(input, running_mean, running_std, weight, bias, training=training, update=True,
                         rmax=rmax, dmax=dmax, momentum=momentum, eps=eps, nonfinite=nonfinite,
                         degenerate=degenerate, who="batch_renorm")[0]


def _batch_renorm(input, running_mean, running_std, weight, bias, *, training, update, rmax, dmax, momentum,
                  eps, nonfinite, degenerate, who):
    if running_mean is None or running_std is None:
        raise ValueError("batch_renorm needs running_mean and running_std (r and d are computed from them)")
    x, view, eps = _channel_args(input, 2, dict(running_mean=running_mean, running_std=running_std,
                                                weight=weight, bias=bias), eps)
    momentum = check_fraction(momentum, "momentum")
    rmax, dmax = check_renorm_limits(rmax, dmax)
    _check_policies(nonfinite, degenerate)
    rm, rs = array_of(running_mean), array_of(running_std)
    action = _degenerate_action(view[0] * view[2], degenerate, x, "value per channel", who) if training else None
    if not training or action == "running":
        return BatchNormEval.apply(x, weight, bias, view=view, mean=rm, var=rs * rs, eps=0.0), None
    y, fn = BatchRenormTrain.run(x, weight, bias, view=view, running_mean=rm, running_std=rs,
                                 rmax=rmax, dmax=dmax, eps=eps)
    if not update or action == "no_update" or fn.mean is None:
        return y, None
    sigma = get_array_module(fn.var).sqrt(fn.var + eps)
    return y, _fold_running([(rm, fn.mean), (rs, sigma)], momentum, nonfinite, who)


def check_rmax(rmax):
    """rmax >= 1 and finite (1 = no correction of the scale)."""
    if isinstance(rmax, bool) or not isinstance(rmax, (int, float)) or not 1 <= rmax < float("inf"):
        raise ValueError(f"rmax must be a finite number >= 1, got {rmax!r}")
    return float(rmax)


def check_dmax(dmax):
    """dmax >= 0 and finite (0 = no correction of the shift)."""
    if isinstance(dmax, bool) or not isinstance(dmax, (int, float)) or not 0 <= dmax < float("inf"):
        raise ValueError(f"dmax must be a finite number >= 0, got {dmax!r}")
    return float(dmax)


def check_renorm_limits(rmax, dmax):
    """rmax >= 1 and dmax >= 0, both finite (rmax=1, dmax=0 is plain BN)."""
    return check_rmax(rmax), check_dmax(dmax)


# ---- instance norm ------------------------------------------------------------------------
def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=UNSET, eps=1e-5, *, decay=None,
                  running_var_estimator="unbiased", nonfinite="skip", degenerate="raise"):
    """Instance Normalization (Ulyanov et al. 2016): each (n, c) over its spatial values.

    With ``use_input_stats`` and running buffers given, they are updated with
    the batch average of the per-instance mean and unbiased variance, as in
    PyTorch (``running_var_estimator="biased"``: the biased one). ``use_input_stats=False``
    normalizes with the running statistics. One spatial element with use_input_stats
    is handled by ``degenerate`` (default: ValueError). ``momentum`` (default 0.1) or ``decay``.
    """
    momentum, _ = check_momentum(momentum, decay, default=0.1)
    return _instance_norm(input, running_mean, running_var, weight, bias, use_input_stats=use_input_stats,
                          update=True, momentum=momentum, eps=eps, estimator=running_var_estimator,
                          nonfinite=nonfinite, degenerate=degenerate, who="instance_norm")[0]


def _instance_norm(input, running_mean, running_var, weight, bias, *, use_input_stats, update, momentum, eps,
                   estimator, nonfinite, degenerate, who):
    x, view, eps = _channel_args(input, 3, dict(running_mean=running_mean, running_var=running_var,
                                                weight=weight, bias=bias), eps)
    momentum = check_fraction(momentum, "momentum")
    _check_policies(nonfinite, degenerate, estimator)
    _, C, S = view
    action = _degenerate_action(S, degenerate, x, "spatial element", who) if use_input_stats else None
    if not use_input_stats or action == "running":
        why = "use_input_stats=False" if not use_input_stats else "degenerate='use_running'"
        return _with_running_stats(x, view, weight, bias, running_mean, running_var, eps,
                                   f"{who} with {why}"), None
    y, fn = RowNorm.run(x, weight, bias, view=view, groups=C, eps=eps)
    if not update or action == "no_update" or fn.mean is None:
        return y, None
    var = (1 / (fn.rstd * fn.rstd) - eps).clip(0)  # per (n, c), biased
    if estimator == "unbiased":
        var = var * (S / (S - 1))
    return y, _fold_running([(running_mean, fn.mean.mean(axis=0)), (running_var, var.mean(axis=0))],
                            momentum, nonfinite, who)


# ---- row norms ------------------------------------------------------------------------------
def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, mask=None):
    """Group Normalization (Wu & He 2018): each sample's C/G channels of a group normalized together.

    input (N, C, *spatial) with C divisible by ``num_groups``; affine per channel.
    G=1 is LayerNorm over (C, *spatial) with per-channel affine; G=C is InstanceNorm.
    ``mask`` (bool, broadcastable to (N, *spatial), True = valid): statistics of each
    (sample, group) over its valid entries; output and gradient 0 at masked positions.
    """
    x = check_input(input, min_ndim=2)
    view = _channel_view(x)
    C = view[1]
    G = check_count(num_groups, "num_groups")
    if C % G:
        raise ValueError(f"num_groups={G} must divide the number of channels, got C={C} (input shape {tuple(x.shape)})")
    check_vector(weight, C, "weight", x)
    check_vector(bias, C, "bias", x)
    eps = check_eps(eps)
    if mask is not None:
        return _masked.group_norm(x, mask, G, weight, bias, eps)
    return RowNorm.apply(x, weight, bias, view=view, groups=G, eps=eps)


def _rows_view(x, normalized_shape):
    shape = normalized_shape_of(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape or x.ndim < len(shape):
        raise ValueError(f"normalized_shape={shape} must match the trailing dimensions of input, "
                         f"got input of shape {tuple(x.shape)}")
    K = int(numpy.prod(shape, dtype=numpy.int64))
    return shape, (x.size // K if K else 0, K)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, mask=None):
    """Layer Normalization (Ba et al. 2016) over the trailing ``normalized_shape``; affine per element.

    ``mask`` (bool, broadcastable to the input's full shape, True = valid): each row's
    statistics over its valid entries; output and gradient 0 at masked positions.
    """
    x = check_input(input)
    shape, (R, K) = _rows_view(x, normalized_shape)
    check_shaped(weight, shape, "weight", x)
    check_shaped(bias, shape, "bias", x)
    eps = check_eps(eps)
    if mask is not None:
        return _masked.layer_norm(x, mask, (R, K), weight, bias, eps)
    return RowNorm.apply(x, weight, bias, view=(R, K, 1), groups=1, eps=eps)


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
           "linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "cross_entropy", "mse_loss", "nll_loss",
           "check_renorm_limits", "check_rmax", "check_dmax", "no_stats_update", "stats_updates_enabled",
           "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "leaky_relu", "gelu", "silu", "dropout",
           "NONFINITE_POLICIES", "DEGENERATE_POLICIES", "VAR_ESTIMATORS"]
