"""Batch Normalization layers, and the running-statistics base they share with InstanceNorm and Batch Renorm.

Conventions (PyTorch's unless said otherwise; docs/normalization-policies.md has the tables):

* ``momentum`` (default 0.1): ``running = (1 - momentum) * running + momentum * batch``.
  ``momentum=None`` keeps a cumulative average instead: batch k is folded in
  with weight 1/k, so after k batches each running statistic is the plain
  mean of the k per-batch statistics (every batch weighs the same, whatever
  its size). ``decay=`` is the Keras/Chainer/Flax spelling of the same
  average, ``running = decay * running + (1 - decay) * batch``; give one or
  the other. ``self.momentum`` always holds PyTorch's meaning (1 - decay).
* ``running_var`` is updated with the unbiased batch variance, n/(n-1) with
  n = N * prod(spatial) (``running_var_estimator="biased"``: the biased one, as
  Keras and Flax); the output is normalized with the biased one.
* ``eps`` (default 1e-5) is added to the variance inside the square root.
* In training, batch statistics are used and (if ``track_running_stats``) the
  running buffers updated; in eval the running statistics are used. With
  ``track_running_stats=False`` batch statistics are used in both modes.
* ``freeze_stats()``: running statistics are used and never updated, in train
  mode too (fine-tuning with small batches); gradients still reach x, weight, bias.
* ``nonfinite="skip"`` (default): a training batch whose statistics hold NaN/Inf
  leaves every running buffer untouched and is counted in ``num_batches_skipped``;
  "raise" raises FloatingPointError, "propagate" folds it in (PyTorch).
* Training on one value per channel: ``degenerate="raise"`` (default, a ValueError),
  "use_running" or "skip_update". Eval mode accepts it.
  An empty batch returns an empty output and changes no statistic.
"""
import numpy

from . import functional as F
from .checks import UNSET, check_choice, check_count, check_eps, check_input, check_momentum
from .module import Module, Parameter


class _NormBase(Module):
    """Parameters (weight, bias) and running buffers shared by BatchNorm, InstanceNorm and Batch Renorm.

    Buffers: ``running_mean``, the running spread (``running_var``, or ``running_std`` for
    Batch Renorm), ``num_batches_tracked`` (batches folded in) and ``num_batches_skipped``
    (batches that nonfinite="skip" kept out). ``num_batches_skipped`` is an optional buffer:
    a PyTorch state dict, which lacks it, still loads strictly (``cubn.nn.to_torch_state_dict``
    drops it on the way out). ``frozen_stats`` and ``name`` are plain attributes, not state.
    """

    ndims = None                   # accepted input ranks
    spread_buffer = "running_var"  # Batch Renorm keeps running_std instead
    default_momentum = 0.1
    supports_mask = False          # BatchNorm takes forward(input, mask=...)
    name = None                    # dotted name in a model, for error messages (see name_norm_layers)

    def __init__(self, num_features, eps=1e-5, momentum=UNSET, affine=True, track_running_stats=True, *,
                 bias=True, decay=None, running_var_estimator="unbiased", nonfinite="skip", degenerate="raise"):
        super().__init__()
        self.num_features = check_count(num_features, "num_features")
        self.eps = check_eps(eps)
        self.momentum, self.decay = check_momentum(momentum, decay, self.default_momentum, allow_none=True)
        self.running_var_estimator = check_choice(running_var_estimator, "running_var_estimator",
                                                  F.VAR_ESTIMATORS)
        self.nonfinite = check_choice(nonfinite, "nonfinite", F.NONFINITE_POLICIES)
        self.degenerate = check_choice(degenerate, "degenerate", F.DEGENERATE_POLICIES)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.frozen_stats = False
        if self.degenerate == "use_running" and not self.track_running_stats:
            raise ValueError(f"degenerate='use_running' normalizes one-value batches with the running statistics, "
                             f"but {type(self).__name__}(track_running_stats=False) keeps none; "
                             f"use 'raise' or 'skip_update'")
        C = self.num_features
        # bias=False (PyTorch 2.x's keyword): a learned scale and no shift
        self.register_parameter("weight", Parameter(numpy.ones(C, numpy.float32)) if self.affine else None)
        self.register_parameter("bias", Parameter(numpy.zeros(C, numpy.float32)) if self.affine and bias else None)
        if self.track_running_stats:
            self.register_buffer("running_mean", numpy.zeros(C, numpy.float32))
            self.register_buffer(self.spread_buffer, numpy.ones(C, numpy.float32))
            self.register_buffer("num_batches_tracked", numpy.array(0, numpy.int64))
            self.register_buffer("num_batches_skipped", numpy.array(0, numpy.int64), optional=True)
        else:
            for name in ("running_mean", self.spread_buffer, "num_batches_tracked", "num_batches_skipped"):
                self.register_buffer(name, None)

    # ---- running statistics -------------------------------------------------------------
    def reset_running_stats(self):
        """running_mean <- 0, running spread <- 1, num_batches_tracked and num_batches_skipped <- 0."""
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            getattr(self, self.spread_buffer).data[...] = 1
            self.num_batches_tracked.data[...] = 0
            self.num_batches_skipped.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.weight is not None:
            self.weight.data[...] = 1
        if self.bias is not None:
            self.bias.data[...] = 0

    def freeze_stats(self):
        """Normalize with the running statistics and never update them, in train() as in eval(); returns self.

        For fine-tuning with small batches or a different data distribution: the
        layer computes its inference formula, so gradients flow to the input,
        weight and bias as in eval mode, while train()/eval() and requires_grad
        of the parameters stay yours to set. The flag is a plain attribute, not
        state: it is not in the state dict; freeze again after rebuilding a model.
        """
        if not self.track_running_stats:
            raise ValueError(f"{self._who()} has no running statistics to freeze (track_running_stats=False)")
        self.frozen_stats = True
        return self

    def unfreeze_stats(self):
        """Undo ``freeze_stats()``: batch statistics in training again; returns self."""
        self.frozen_stats = False
        return self

    # ---- forward ----------------------------------------------------------------------------
    def _check(self, input):
        x = check_input(input, ndims=self.ndims, layer=type(self).__name__)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input with {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)}); channels are axis 1")
        return x

    def _who(self):
        """How error messages name this layer: class, size and, when known, its dotted name in a model."""
        where = f" ({self.name})" if self.name else ""
        return f"{type(self).__name__}({self.num_features}){where}"

    def _momentum_factor(self):
        """The weight of this batch in the running update: momentum, or 1/k for the k-th batch when None."""
        if self.momentum is None:
            return 1.0 / (int(self.num_batches_tracked.data) + 1)
        return self.momentum

    def forward(self, input, mask=None):
        x = self._check(input)
        if mask is not None and not self.supports_mask:
            raise TypeError(f"{type(self).__name__} does not take mask= "
                            f"(masked statistics exist for BatchNorm1d/2d/3d, GroupNorm and LayerNorm)")
        batch_stats = (self.training or not self.track_running_stats) and not self.frozen_stats
        update = batch_stats and self.training and self.track_running_stats and F.stats_updates_enabled()
        momentum = self._momentum_factor() if update else 0.0
        y, outcome = self._normalize(x, batch_stats, update, momentum, mask)
        # Counted only after the functional call returned: a rejected batch is not counted.
        if outcome is not None:  # a 0-d bool on the device: count without reading it back
            self.num_batches_tracked.data[...] += outcome
            self.num_batches_skipped.data[...] += ~outcome
        return y

    def _normalize(self, x, batch_stats, update, momentum, mask):
        """The functional call; returns (y, None or the 0-d bool "folded in", see cubn.nn.functional).

        ``batch_stats``: normalize with the batch statistics (else the running ones);
        ``update``: fold them into the running buffers.
        """
        raise NotImplementedError

    def _policy_kwargs(self):
        return dict(nonfinite=self.nonfinite, degenerate=self.degenerate, who=self._who())

    # ---- repr ---------------------------------------------------------------------------------
    def _average_repr(self):
        return f"decay={self.decay}" if self.decay is not None else f"momentum={self.momentum}"

    def _policy_repr(self):
        """The settings that differ from their defaults, so a default layer prints as in PyTorch."""
        parts = []
        if self.running_var_estimator != "unbiased":
            parts.append(f"running_var_estimator={self.running_var_estimator!r}")
        if self.nonfinite != "skip":
            parts.append(f"nonfinite={self.nonfinite!r}")
        if self.degenerate != "raise":
            parts.append(f"degenerate={self.degenerate!r}")
        if self.frozen_stats:
            parts.append("frozen_stats=True")
        return "".join(", " + p for p in parts)

    def extra_repr(self):
        bias = ", bias=False" if self.affine and self.bias is None else ""
        return (f"{self.num_features}, eps={self.eps}, {self._average_repr()}, affine={self.affine}{bias}, "
                f"track_running_stats={self.track_running_stats}{self._policy_repr()}")


class _BatchNorm(_NormBase):
    supports_mask = True

    def forward(self, input, mask=None):
        """Normalize ``input``; ``mask`` (bool, broadcastable to the input without its channel axis,
        e.g. (N, L) for (N, C, L); True = valid) restricts the statistics to the valid entries and
        makes the output 0 at the others."""
        return super().forward(input, mask)

    def _normalize(self, x, batch_stats, update, momentum, mask):
        return F._batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=batch_stats,
                             update=update, momentum=momentum, eps=self.eps, estimator=self.running_var_estimator,
                             mask=mask, **self._policy_kwargs())


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input; statistics per channel C."""
    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W) input; statistics per channel C."""
    ndims = (4,)


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W) input; statistics per channel C."""
    ndims = (5,)


def _layers_with_running_stats(model):
    """(dotted name, layer) for ``model`` and each descendant that keeps running statistics."""
    for name, m in model.named_modules():
        if isinstance(m, _NormBase) and m.track_running_stats:
            yield name, m


def freeze_batchnorm(model):
    """``freeze_stats()`` on every layer of ``model`` with running statistics; returns ``model``.

    BatchNorm, Batch Renorm and InstanceNorm with track_running_stats=True are frozen;
    the others are left as they are. Use it to fine-tune a pretrained network with
    small batches: each frozen layer normalizes with its running statistics and never
    changes them, even in train() mode, while its weight and bias keep training.
    """
    for _, layer in _layers_with_running_stats(model):
        layer.freeze_stats()
    return model


def unfreeze_batchnorm(model):
    """Undo ``freeze_batchnorm``: ``unfreeze_stats()`` on every such layer; returns ``model``."""
    for _, layer in _layers_with_running_stats(model):
        layer.unfreeze_stats()
    return model


def name_norm_layers(model):
    """Give each layer of ``model`` with running statistics its dotted name (``layer.name``); returns ``model``.

    A layer does not know where it sits in a model; with its name set, the errors of
    nonfinite="raise" and degenerate="raise" say which layer failed (e.g. ``features.3``).
    """
    for name, layer in _layers_with_running_stats(model):
        if name:
            layer.name = name
    return model
