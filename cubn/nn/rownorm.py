"""Layer, Group and Instance Normalization: the row-normalization family.

Each normalizes rows of an (R, K) view of its input (``kernels/rownorm.cu``):
LayerNorm R = N, K = prod(normalized_shape); InstanceNorm R = N*C, K = H*W;
GroupNorm R = N*G, K = (C/G)*H*W. Statistics come from each sample alone, so
train and eval compute the same thing (InstanceNorm with
``track_running_stats=True`` is the exception: eval uses running statistics).
``eps`` defaults to 1e-5 and is added to the biased variance.

LayerNorm and GroupNorm take ``forward(input, mask=None)``: statistics over the
valid entries only (True = valid), output and gradient 0 at masked positions
(see ``cubn/nn/masked.py``).
"""
import numpy

from .. import backend
from . import functional as F
from . import masked as _masked
from .batchnorm import _NormBase
from .checks import UNSET, check_choice, check_count, check_eps, check_input, normalized_shape_of
from ..tensor import as_tensor
from .module import Module, Parameter


class LayerNorm(Module):
    """LayerNorm over the trailing ``normalized_shape``; weight and bias of that shape (per element)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        self.normalized_shape = normalized_shape_of(normalized_shape)
        self.eps = check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        has_weight, has_bias = self.elementwise_affine, self.elementwise_affine and bias
        self.register_parameter("weight", Parameter(numpy.ones(self.normalized_shape, numpy.float32))
                                if has_weight else None)
        self.register_parameter("bias", Parameter(numpy.zeros(self.normalized_shape, numpy.float32))
                                if has_bias else None)

    def forward(self, input, mask=None):
        """``mask``: bool, broadcastable to the input's full shape (True = valid), e.g. (N, L, 1)
        for (N, L, C) tokens normalized over C; None normalizes every entry."""
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, mask=mask)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """GroupNorm: channels split into ``num_groups`` groups, each (sample, group) normalized; affine per channel.

    Training on one value per group is a ValueError (the output would be
    beta whatever the input); eval mode computes it. ``degenerate="skip_update"``
    computes it in training too (there are no running statistics to protect);
    "use_running" does not apply: GroupNorm keeps no running statistics.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True, degenerate="raise"):
        super().__init__()
        self.degenerate = check_choice(degenerate, "degenerate", F.DEGENERATE_POLICIES)
        if self.degenerate == "use_running":
            raise ValueError("GroupNorm keeps no running statistics, so degenerate='use_running' has nothing to "
                             "normalize with; use 'raise' or 'skip_update'")
        self.num_groups = check_count(num_groups, "num_groups")
        self.num_channels = check_count(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        C = self.num_channels
        self.register_parameter("weight", Parameter(numpy.ones(C, numpy.float32)) if self.affine else None)
        self.register_parameter("bias", Parameter(numpy.zeros(C, numpy.float32)) if self.affine and bias else None)

    def forward(self, input, mask=None):
        """``mask``: bool, broadcastable to the input without its channel axis (True = valid)."""
        x = check_input(input, min_ndim=2, layer="GroupNorm")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm({self.num_groups}, {self.num_channels}) got input with {x.shape[1]} "
                             f"channels (shape {tuple(x.shape)})")
        if self.training and self.degenerate == "raise" and x.size and self._one_value_per_group(x, mask):
            valid = " unmasked" if mask is not None else ""
            raise ValueError(f"Expected more than 1{valid} value per group when training, got input of shape "
                             f"{tuple(x.shape)} with num_groups={self.num_groups} "
                             f"(degenerate='skip_update' accepts such batches)")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, mask=mask)

    def _one_value_per_group(self, x, mask):
        if mask is None:
            return x.size // (x.shape[0] * self.num_groups) == 1
        counts = _masked.group_counts(mask, x, self.num_groups)
        return bool(backend.get_array_module(counts).any(counts == 1))  # one device sync

    def extra_repr(self):
        extra = f", degenerate={self.degenerate!r}" if self.degenerate != "raise" else ""
        bias = ", bias=False" if self.affine and self.bias is None else ""
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}{bias}{extra}"


class _InstanceNorm(_NormBase):
    """InstanceNorm: each (n, c) normalized over its spatial values. affine=False and
    track_running_stats=False by default, as in PyTorch; when tracking, the running
    statistics are batch averages of the per-instance statistics and eval uses them.
    The policies (decay, running_var_estimator, nonfinite, degenerate, freeze_stats)
    are BatchNorm's; one spatial element per instance is the degenerate case."""

    def __init__(self, num_features, eps=1e-5, momentum=UNSET, affine=False, track_running_stats=False, *,
                 bias=True, decay=None, running_var_estimator="unbiased", nonfinite="skip", degenerate="raise"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias, decay=decay,
                         running_var_estimator=running_var_estimator, nonfinite=nonfinite, degenerate=degenerate)

    def forward(self, input, mask=None):
        """(N, C, *spatial) input, or unbatched (C, *spatial) as PyTorch takes it (returned unbatched)."""
        if getattr(input, "ndim", None) == self.ndims[0] - 1:
            return super().forward(as_tensor(input).unsqueeze(0), mask).squeeze(0)
        return super().forward(input, mask)

    def _normalize(self, x, batch_stats, update, momentum, mask):
        return F._instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                use_input_stats=batch_stats, update=update, momentum=momentum, eps=self.eps,
                                estimator=self.running_var_estimator, **self._policy_kwargs())


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L) input."""
    ndims = (3,)


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W) input."""
    ndims = (4,)


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W) input."""
    ndims = (5,)
