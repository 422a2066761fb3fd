"""Layer, Group and Instance Normalization: the row-normalization family.

Each normalizes rows of an (R, K) view of its input (``kernels/rownorm.cu``):
LayerNorm R = N, K = prod(normalized_shape); InstanceNorm R = N*C, K = H*W;
GroupNorm R = N*G, K = (C/G)*H*W. Statistics come from each sample alone, so
train and eval compute the same thing (InstanceNorm with
``track_running_stats=True`` is the exception: eval uses running statistics).
``eps`` defaults to 1e-5 and is added to the biased variance.
"""
import numpy

from . import functional as F
from .batchnorm import _NormBase
from .checks import check_count, check_eps, check_input, normalized_shape_of
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

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """GroupNorm: channels split into ``num_groups`` groups, each (sample, group) normalized; affine per channel.

    Training on one value per group is a ValueError (the output would be
    beta whatever the input); eval mode computes it.
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        self.num_groups = check_count(num_groups, "num_groups")
        self.num_channels = check_count(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={num_groups} must divide num_channels={num_channels}")
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        C = self.num_channels
        self.register_parameter("weight", Parameter(numpy.ones(C, numpy.float32)) if self.affine else None)
        self.register_parameter("bias", Parameter(numpy.zeros(C, numpy.float32)) if self.affine else None)

    def forward(self, input):
        x = check_input(input, min_ndim=2, layer="GroupNorm")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm({self.num_groups}, {self.num_channels}) got input with {x.shape[1]} "
                             f"channels (shape {tuple(x.shape)})")
        if self.training and x.size and x.size // (x.shape[0] * self.num_groups) == 1:
            raise ValueError(f"Expected more than 1 value per group when training, got input of shape "
                             f"{tuple(x.shape)} with num_groups={self.num_groups}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _InstanceNorm(_NormBase):
    """InstanceNorm: each (n, c) normalized over its spatial values. affine=False and
    track_running_stats=False by default, as in PyTorch; when tracking, the running
    statistics are batch averages of the per-instance statistics and eval uses them."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _normalize(self, x, running, use_batch_stats, momentum):
        return F.instance_norm(x, *running, self.weight, self.bias, use_input_stats=use_batch_stats,
                               momentum=momentum, eps=self.eps)


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L) input."""
    ndims = (3,)


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W) input."""
    ndims = (4,)


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W) input."""
    ndims = (5,)
