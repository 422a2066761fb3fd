"""Tools around trained BatchNorm layers: recalibrate their statistics, inspect them, fold them away.

* ``recalibrate_bn(model, batches)`` recomputes every BatchNorm layer's running mean and variance
  over a set of batches with the exact pooled estimator (one pass, float64 accumulation).
* ``bn_report(model, batch)`` shows, per layer and channel, how one batch's statistics compare
  with the running ones, and flags layers that look wrong (never updated, still at init, or with
  a large gap between training and inference statistics). It changes no state.
* ``fold_bn(model, into="previous")`` returns a new inference model in which each BatchNorm next
  to a Conv2d or Linear has been folded into that layer's weight and bias.

"BatchNorm layer" means ``BatchNorm1d``, ``BatchNorm2d`` (including ``GhostBatchNorm2d``, a
subclass) and ``BatchNorm3d``. Batch Renorm, Instance Norm and the row norms are left alone.

The per-channel moment helpers at the top (``channel_moments``, ``merge_moments``) are shared
with ``GhostBatchNorm2d``, which pools its sub-batch statistics the same way.
"""
import contextlib
import copy
import math
import numbers

import numpy

from .. import backend
from ..ops.norm import Moments
from ..tensor import Tensor, no_grad
from . import functional as F
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .checks import array_of
from .conv import Conv2d
from .layers import Dropout, Identity
from .linear import Linear
from .module import Module, Parameter, Sequential

BATCHNORM_TYPES = (BatchNorm1d, BatchNorm2d, BatchNorm3d)


# ---- per-channel moments (count, mean, M2), merged with Chan's formula ---------------------
def channel_moments(x, mask=None):
    """Moments of each channel of x (N, C, *spatial) over its N * prod(spatial) values, two-pass, float64.

    ``mask`` (bool, broadcastable to (N, *spatial), True = valid; BatchNorm's ``mask=``) keeps
    only the valid values.
    """
    x = array_of(x)
    xp = backend.get_array_module(x)
    N, C = x.shape[0], x.shape[1]
    S = int(numpy.prod(x.shape[2:], dtype=numpy.int64))
    v = x.reshape(N, C, S).astype(numpy.float64)
    if mask is None:
        weight, count = None, N * S
    else:
        weight = xp.broadcast_to(xp.asarray(array_of(mask), dtype=bool), (N,) + tuple(x.shape[2:]))
        weight = weight.reshape(N, 1, S).astype(numpy.float64)
        count = int(weight.sum())
    if count == 0:
        zeros = xp.zeros(C, numpy.float64)
        return Moments(0, zeros, zeros)
    if weight is None:
        mean = v.mean(axis=(0, 2))
        d = v - mean.reshape(1, C, 1)
        return Moments(count, mean, (d * d).sum(axis=(0, 2)))
    mean = (v * weight).sum(axis=(0, 2)) / count
    d = (v - mean.reshape(1, C, 1)) * weight
    return Moments(count, mean, (d * d).sum(axis=(0, 2)))


def unbiased_running_var(layer):
    """True unless the layer keeps a biased running variance (``running_var_estimator="biased"``)."""
    return getattr(layer, "running_var_estimator", "unbiased") != "biased"


# ---- helpers for running a model while watching its BatchNorm layers -------------------------
def batchnorm_layers(model):
    """(name, layer) for every BatchNorm layer in ``model`` (itself included) that keeps running stats."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a cubn.nn.Module, got {type(model).__name__}")
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, BATCHNORM_TYPES) and m.track_running_stats]


@contextlib.contextmanager
def _modes_restored(model):
    """Put back every module's train/eval flag on exit, whatever the block changed."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in saved:
            object.__setattr__(m, "training", flag)


@contextlib.contextmanager
def _inputs_watched(layers, watch):
    """Call ``watch(name, layer, input, mask)`` after each listed layer's forward, for the block's duration.

    Done by shadowing ``forward`` with an instance attribute (``Module.__call__`` calls
    ``self.forward``), removed again on exit. The layer's own forward runs first, so a bad
    input raises the layer's usual error before ``watch`` sees it.
    """
    def wrapped(name, layer, forward):
        def forward_and_watch(input, mask=None):
            y = forward(input) if mask is None else forward(input, mask=mask)
            watch(name, layer, input, mask)
            return y
        return forward_and_watch

    try:
        for name, layer in layers:
            object.__setattr__(layer, "forward", wrapped(name, layer, layer.forward))
        yield
    finally:
        for _, layer in layers:
            layer.__dict__.pop("forward", None)


def _first(batch):
    """A batch may be an input or an (input, target, ...) tuple: the input, as a Tensor."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("a batch given as a tuple or list must hold the input first, got an empty one")
        batch = batch[0]
    return batch if isinstance(batch, Tensor) else Tensor(batch)


# ---- recalibrate_bn -----------------------------------------------------------------------
def recalibrate_bn(model, batches):
    """Recompute every BatchNorm layer's running mean and variance over ``batches``; returns the drift.

    Why: running statistics are an exponential average collected while the weights were
    still moving, so after training (and especially after weight averaging, pruning or
    fine-tuning) they can lag the network they describe. Recomputing them on a few hundred
    training batches usually fixes an eval accuracy far below the training accuracy.

    What it does, in one pass over ``batches`` (an iterable of inputs, or of (input, target, ...)
    tuples whose first element is used):

    * the BatchNorm layers run in training mode, so each one normalizes with its batch
      statistics, exactly as in the training forward the statistics are meant to summarize
      (the choice of PyTorch's ``torch.optim.swa_utils.update_bn``); every other layer runs
      in eval mode, so Dropout is off as it will be at inference (this differs from
      ``update_bn``, which leaves Dropout on: dropout changes the variance the next
      BatchNorm sees, and inference has no dropout) and no random number is drawn;
    * each layer's input is reduced per channel to (count, mean, M2) in float64 and merged
      into its running total with Chan's formula, so the result is the statistics of the
      concatenation of all batches: ``running_mean`` = pooled mean, ``running_var`` =
      pooled M2 / (n - 1) with n the total number of values per channel (one Bessel
      correction over the total, not one per batch), or M2 / n for a layer whose
      ``running_var_estimator`` is ``"biased"``;
    * everything runs under ``no_grad()`` and ``no_stats_update()``; afterwards each layer's
      ``running_mean`` and ``running_var`` are overwritten. Parameters, other buffers,
      ``num_batches_tracked``, ``momentum`` and every module's train/eval mode are as before.

    Layers with ``track_running_stats=False`` are skipped, and so are frozen ones
    (``freeze_stats()``): they normalize with their running statistics in training too, so
    those are part of the trained model. A layer that no batch reaches keeps its statistics
    and reports ``count`` 0. A BatchNorm called with ``mask=`` counts only the valid entries.

    Returns ``{layer name: drift}`` where drift is a dict of
    ``count`` (values per channel used), ``mean_shift`` = max over channels of
    |old_mean - new_mean| / sqrt(new_var + eps) (how many new standard deviations the old
    mean was off), ``var_ratio_max`` and ``var_ratio_min`` = max and min over channels of
    (old_var + eps) / (new_var + eps) (1.0 means no change). The three are None for a layer
    no batch reached. A model that is itself a BatchNorm layer is reported under the name "".
    """
    layers = [(name, m) for name, m in batchnorm_layers(model) if not getattr(m, "frozen_stats", False)]
    totals = {name: Moments(0, 0.0, 0.0) for name, _ in layers}

    def accumulate(name, layer, input, mask):
        totals[name] = totals[name].merge(channel_moments(input, mask))

    seen_batch = False
    with _modes_restored(model), _inputs_watched(layers, accumulate), no_grad(), F.no_stats_update():
        model.eval()
        for _, layer in layers:
            object.__setattr__(layer, "training", True)
        for batch in batches:
            seen_batch = True
            model(_first(batch))
    if not seen_batch:
        raise ValueError("recalibrate_bn: batches was empty; give at least one batch")

    for name, layer in layers:  # check everything before any statistic changes
        total = totals[name]
        if total.count and not bool(backend.get_array_module(total.m2).isfinite(total.m2).all()):
            raise FloatingPointError(f"recalibrate_bn: the input of {name or type(layer).__name__} held NaN or "
                                     f"infinite values; no running statistic was changed")
    drift = {}
    for name, layer in layers:
        total = totals[name]
        if total.count == 0:
            drift[name] = {"count": 0, "mean_shift": None, "var_ratio_max": None, "var_ratio_min": None}
            continue
        drift[name] = _write_statistics(layer, total)
    return drift


def _write_statistics(layer, total):
    """Overwrite the layer's running statistics with ``total``'s; return the drift dict."""
    rm, rv = layer.running_mean.data, layer.running_var.data
    xp = backend.get_array_module(rm)
    new_mean = backend.to_device(total.mean, backend.device_of(rm))
    new_var = backend.to_device(total.variance(unbiased_running_var(layer)), backend.device_of(rm))
    old_mean, old_var = rm.astype(numpy.float64), rv.astype(numpy.float64)
    ratio = (old_var + layer.eps) / (new_var + layer.eps)
    drift = {"count": int(total.count),
             "mean_shift": float(xp.max(xp.abs(old_mean - new_mean) / xp.sqrt(new_var + layer.eps))),
             "var_ratio_max": float(xp.max(ratio)), "var_ratio_min": float(xp.min(ratio))}
    rm[...] = new_mean.astype(rm.dtype)
    rv[...] = new_var.astype(rv.dtype)
    return drift


# ---- bn_report ----------------------------------------------------------------------------
class BNReport:
    """What ``bn_report`` found: ``rows`` (one dict per layer and channel) and a text table.

    Row keys: ``layer``, ``channel``, ``batch_mean``, ``running_mean``, ``batch_var``,
    ``running_var``, ``mean_gap`` (|batch_mean - running_mean| / sqrt(running_var + eps)),
    ``var_ratio`` (batch_var / running_var), ``flags`` (a list of strings, empty when all is well).
    ``str(report)`` is an aligned table; ``report.flagged`` holds only the rows with flags.
    """

    columns = ("layer", "channel", "batch_mean", "running_mean", "batch_var", "running_var", "mean_gap",
               "var_ratio", "flags")

    def __init__(self, rows, threshold):
        self.rows, self.threshold = rows, threshold

    @property
    def flagged(self):
        return [r for r in self.rows if r["flags"]]

    def __str__(self):
        def cell(value):
            if isinstance(value, float):
                return f"{value:.4g}"
            if isinstance(value, list):
                return ", ".join(value)
            return str(value)

        table = [list(self.columns)] + [[cell(r[c]) for c in self.columns] for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.columns))]
        lines = []
        for k, row in enumerate(table):
            # text columns (layer, flags) left-aligned, numbers right-aligned
            parts = [v.ljust(w) if i in (0, len(row) - 1) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(parts).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        n_flagged = len({r["layer"] for r in self.flagged})
        lines.append(f"{len({r['layer'] for r in self.rows})} BatchNorm layer(s), {n_flagged} flagged "
                     f"(threshold {self.threshold:g})")
        return "\n".join(lines)

    def __repr__(self):
        return f"BNReport({len(self.rows)} rows, {len(self.flagged)} flagged)"


def bn_report(model, batch, threshold=2.0):
    """Compare each BatchNorm channel's statistics on ``batch`` with its running statistics.

    Why: a network that trains well but evaluates badly usually has BatchNorm running
    statistics that do not describe what the layers see at inference. This shows where.

    ``model`` runs once on ``batch`` (an input, or an (input, target, ...) tuple) in eval mode,
    so every layer sees the input it would see at inference; each BatchNorm layer's input is
    captured and reduced per channel to its mean and variance (unbiased, or biased for a layer
    whose ``running_var_estimator`` is "biased"; NaN with one value per channel). Nothing
    changes: no gradient is recorded, no running statistic moves, every module's mode is restored.

    Flags (per row):

    * ``"never updated"``: ``num_batches_tracked`` is 0, so no training batch reached this
      layer through cubn (statistics imported from another framework also count 0);
    * ``"running stats at init"``: running_mean all zeros and running_var all ones, the
      values a new layer starts with;
    * ``"large train/eval gap"``: ``mean_gap > threshold`` or ``var_ratio`` outside
      [1/threshold, threshold] (default threshold 2.0: means two running standard deviations
      apart, or variances a factor 2 apart). One batch is a noisy sample: with B values per
      channel, mean_gap alone varies by about 1/sqrt(B).

    Layers with ``track_running_stats=False`` have no running statistics and are skipped.
    Returns a ``BNReport``; print it for the table.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 1 < threshold < math.inf:
        raise ValueError(f"threshold must be a finite number > 1, got {threshold!r}")
    threshold = float(threshold)
    layers = batchnorm_layers(model)
    captured = {}

    def capture(name, layer, input, mask):
        captured.setdefault(name, channel_moments(input, mask))  # first call only, if a layer is reused

    with _modes_restored(model), _inputs_watched(layers, capture), no_grad():
        model.eval()
        model(_first(batch))

    rows = []
    for name, layer in layers:
        if name not in captured:
            continue
        stats = captured[name]
        unbiased = unbiased_running_var(layer)
        enough = stats.count >= (2 if unbiased else 1)
        batch_mean = backend.to_numpy(stats.mean)
        batch_var = backend.to_numpy(stats.variance(unbiased)) if enough else numpy.full(layer.num_features, numpy.nan)
        run_mean = layer.running_mean.numpy().astype(numpy.float64)
        run_var = layer.running_var.numpy().astype(numpy.float64)
        layer_flags = []
        if int(layer.num_batches_tracked.numpy()) == 0:
            layer_flags.append("never updated")
        if (run_mean == 0).all() and (run_var == 1).all():
            layer_flags.append("running stats at init")
        gap = numpy.abs(batch_mean - run_mean) / numpy.sqrt(run_var + layer.eps)
        with numpy.errstate(divide="ignore", invalid="ignore"):
            ratio = batch_var / run_var
        for c in range(layer.num_features):
            flags = list(layer_flags)
            if gap[c] > threshold or ratio[c] > threshold or ratio[c] < 1 / threshold:
                flags.append("large train/eval gap")
            rows.append({"layer": name or type(layer).__name__, "channel": c,
                         "batch_mean": float(batch_mean[c]), "running_mean": float(run_mean[c]),
                         "batch_var": float(batch_var[c]), "running_var": float(run_var[c]),
                         "mean_gap": float(gap[c]), "var_ratio": float(ratio[c]), "flags": flags})
    return BNReport(rows, threshold)


# ---- fold_bn ------------------------------------------------------------------------------
_PASS_THROUGH = (Identity, Dropout)  # identities at inference, allowed between a BN and the layer after it


def fold_bn(model, into="previous", allow_inexact_padding=False):
    """A new inference model with BatchNorm layers folded into a neighbouring Conv2d or Linear.

    Why: at inference a BatchNorm is a per-channel affine map, y = s * x + t with
    s = gamma / sqrt(running_var + eps) and t = beta - running_mean * s, so it can be merged
    into the weights of the layer next to it: one layer less to run, same output.

    ``into="previous"``: a BatchNorm2d (BatchNorm1d) directly following a Conv2d (Linear) in a
    ``Sequential`` is folded into it, per output channel o:
    ``w'[o] = w[o] * s[o]`` and ``b'[o] = b[o] * s[o] + t[o]`` (b = 0 when the layer had no
    bias; it gets one). Exact.

    ``into="next"``: a BatchNorm2d (BatchNorm1d) followed by a Conv2d (Linear), directly or
    with only Identity / Dropout layers between, is folded into that layer, per input
    channel c: ``w'[:, c] = w[:, c] * s[c]`` and ``b' = b + sum over c, kernel of w * t``.
    This is exact only without zero padding: the conv pads the BatchNorm *output* with zeros,
    but the folded conv pads its input, which is the BatchNorm input, and a 0 there means
    t rather than 0 after BatchNorm. A Conv2d with padding > 0 is therefore a ValueError,
    unless ``allow_inexact_padding=True`` accepts outputs that differ along the borders.
    The Linear case assumes (N, features) inputs.

    The BatchNorm is replaced by ``Identity``. Only layers that keep running statistics are
    folded (eval-mode semantics, whatever mode the layer is in); others stay. Every
    ``Sequential`` in the model is walked, at any depth. The original model is not
    touched: the result is a deep copy, in eval mode, without gradients.
    """
    if into not in ("previous", "next"):
        raise ValueError(f"into must be 'previous' or 'next', got {into!r}")
    if not isinstance(model, Module):
        raise TypeError(f"model must be a cubn.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model)
    folded.eval()
    folded.zero_grad()
    for path, module in list(folded.named_modules()):
        if isinstance(module, Sequential):
            _fold_sequence(module, path, into, allow_inexact_padding)
    return folded


def _pair_kind(bn, layer):
    """The layer type a BatchNorm of this kind folds into: Conv2d for BN2d, Linear for BN1d, else None."""
    if isinstance(bn, BatchNorm2d) and isinstance(layer, Conv2d):
        return Conv2d
    if isinstance(bn, BatchNorm1d) and isinstance(layer, Linear):
        return Linear
    return None


def _fold_sequence(seq, path, into, allow_inexact_padding):
    keys = list(seq._modules)
    for i, key in enumerate(keys):
        bn = seq._modules[key]
        if not (isinstance(bn, BATCHNORM_TYPES) and bn.track_running_stats):
            continue
        where = f"{path}.{key}" if path else key
        if into == "previous":
            if i == 0 or _pair_kind(bn, seq._modules[keys[i - 1]]) is None:
                continue
            _fold_into_previous(seq._modules[keys[i - 1]], bn, where)
        else:
            j = i + 1
            while j < len(keys) and isinstance(seq._modules[keys[j]], _PASS_THROUGH):
                j += 1
            if j == len(keys) or _pair_kind(bn, seq._modules[keys[j]]) is None:
                continue
            _fold_into_next(bn, seq._modules[keys[j]], where, allow_inexact_padding)
        seq._modules[key] = Identity()


def _scale_shift(bn):
    """(s, t) of the BatchNorm's eval map y = s * x + t, per channel, float64 on the layer's device."""
    mean = bn.running_mean.data.astype(numpy.float64)
    var = bn.running_var.data.astype(numpy.float64)
    xp = backend.get_array_module(mean)
    gamma = bn.weight.data.astype(numpy.float64) if bn.weight is not None else 1.0
    beta = bn.bias.data.astype(numpy.float64) if bn.bias is not None else 0.0
    s = gamma / xp.sqrt(var + bn.eps)
    return s, beta - mean * s


def _set_weight_and_bias(layer, w, b):
    dtype = layer.weight.dtype
    layer.weight.data = w.astype(dtype)
    if layer.bias is None:
        layer.bias = Parameter(b.astype(dtype))
    else:
        layer.bias.data = b.astype(dtype)


def _bias64(layer, xp, n):
    return layer.bias.data.astype(numpy.float64) if layer.bias is not None else xp.zeros(n, numpy.float64)


def _fold_into_previous(layer, bn, where):
    out = layer.out_channels if isinstance(layer, Conv2d) else layer.out_features
    if out != bn.num_features:
        raise ValueError(f"fold_bn: {where} ({type(bn).__name__}({bn.num_features})) follows a layer with {out} "
                         f"output channels")
    s, t = _scale_shift(bn)
    xp = backend.get_array_module(s)
    w = layer.weight.data.astype(numpy.float64)
    w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))          # scale each output channel
    _set_weight_and_bias(layer, w, _bias64(layer, xp, out) * s + t)


def _fold_into_next(bn, layer, where, allow_inexact_padding):
    s, t = _scale_shift(bn)
    xp = backend.get_array_module(s)
    w = layer.weight.data.astype(numpy.float64)
    if isinstance(layer, Linear):
        if layer.in_features != bn.num_features:
            raise ValueError(f"fold_bn: {where} ({type(bn).__name__}({bn.num_features})) feeds a Linear with "
                             f"in_features={layer.in_features}")
        # W (x * s + t) + b = (W * s) x + (W t + b)
        _set_weight_and_bias(layer, w * s.reshape(1, -1), _bias64(layer, xp, layer.out_features) + w @ t)
        return
    if layer.in_channels != bn.num_features:
        raise ValueError(f"fold_bn: {where} ({type(bn).__name__}({bn.num_features})) feeds a Conv2d with "
                         f"in_channels={layer.in_channels}")
    if layer.padding != (0, 0) and not allow_inexact_padding:
        raise ValueError(f"fold_bn(into='next'): {where} feeds a Conv2d with padding={layer.padding}. The conv "
                         f"pads the BatchNorm output with zeros, which the folded conv cannot reproduce, so the "
                         f"outputs would differ along the borders. Use into='previous', remove the padding, or "
                         f"pass allow_inexact_padding=True to accept the difference.")
    # weight (O, C/groups, KH, KW): entry [o, j] reads input channel (group of o) * C/groups + j.
    O, Cg = w.shape[:2]
    group_of_o = xp.arange(O) // (O // layer.groups)
    channel = group_of_o.reshape(O, 1) * Cg + xp.arange(Cg).reshape(1, Cg)   # (O, Cg) input channel index
    s_oc, t_oc = s[channel], t[channel]
    bias = _bias64(layer, xp, O) + (w * t_oc.reshape(O, Cg, 1, 1)).sum(axis=(1, 2, 3))
    _set_weight_and_bias(layer, w * s_oc.reshape(O, Cg, 1, 1), bias)


__all__ = ["BNReport", "Moments", "batchnorm_layers", "bn_report", "channel_moments", "fold_bn", "recalibrate_bn"]
