"""One flag, ``norm=``, picks the normalization layer everywhere in a model.

=========  ======================================  ====================================
``norm``   after a Conv2d (N, C, H, W)             after a Linear (N, C)
=========  ======================================  ====================================
"bn"       BatchNorm2d(C)                          BatchNorm1d(C)
"brn"      BatchRenorm2d(C), plain BN warm-up      BatchRenorm1d(C), same schedule
"gn"       GroupNorm(gcd(C, 8), C)                 GroupNorm(gcd(C, 8), C)
"ln"       GroupNorm(1, C): over (C, H, W)         LayerNorm(C)
"in"       InstanceNorm2d(C, affine=True)          ValueError: one value per instance
"rms"      ChannelRMSNorm(C): over (C, H, W)       RMSNorm(C)
"none"     Identity                                Identity
=========  ======================================  ====================================

"ln" and "rms" after a convolution normalize each sample over all of (C, H, W), with one scale
(and shift) per channel, so the layer does not depend on the image size. Batch Renorm keeps the
paper's moving averages but with momentum 0.1 (short runs), and trains as plain BN for its first
100 steps before relaxing r and d to rmax=3, dmax=5 over the next 400.
"""
import math

import numpy

from .. import nn
from ..nn import functional as F

NORMS = ("bn", "brn", "gn", "ln", "in", "rms", "none")


def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    return norm


class ChannelRMSNorm(nn.Module):
    """RMSNorm of each sample over (C, *spatial) with one scale per channel: y = x / rms(x) * weight[c]."""

    def __init__(self, num_channels, eps=1e-5):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.weight = nn.Parameter(numpy.ones(num_channels, numpy.float32))

    def forward(self, x):
        rows = x.reshape(x.shape[0], -1)
        y = F.rms_norm(rows, (rows.shape[1],), None, self.eps).reshape(*x.shape)
        return y * self.weight.reshape(1, -1, *([1] * (x.ndim - 2)))

    def extra_repr(self):
        return f"{self.num_channels}, eps={self.eps}"


def norm_layer(norm, channels, spatial=True):
    """The layer ``norm`` names for ``channels`` features, after a Conv2d (``spatial``) or a Linear."""
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if norm == "brn":
        layer = nn.BatchRenorm2d if spatial else nn.BatchRenorm1d
        return layer(channels, momentum=0.1, warmup_steps=100, ramp_steps=400)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    if norm == "in":
        if not spatial:
            raise ValueError("norm='in' needs spatial positions: after a Linear each instance has one value "
                             "per channel, which InstanceNorm would map to its bias")
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "rms":
        return ChannelRMSNorm(channels) if spatial else nn.RMSNorm(channels)
    return nn.Identity()


def has_shift(norm):
    """Whether the norm layer adds a learned shift, which makes the preceding layer's bias redundant."""
    return norm not in ("rms", "none")
