"""2-D convolution: the functional ``conv2d``, the ``Conv2d`` layer, and the argument checks pooling shares.

Images are NCHW (batched, 4-D). ``kernel_size``, ``stride``, ``padding`` and ``dilation`` take an
int (the same for height and width) or a pair of ints, as in PyTorch. Padding is zeros, the same
on both sides; string paddings ('same', 'valid') are not supported.
"""
import math
import numbers

import numpy

from .. import random
from ..ops import conv as _conv
from .checks import check_count, check_input, check_vector
from .module import Module, Parameter


def pair(value, name, minimum):
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a tuple of two ints."""
    items = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in items)


def window_args(x, kernel, stride, padding, dilation, who):
    """Check that the (dilated) kernel fits the padded (H, W) of ``x``; returns the output (OH, OW)."""
    out = _conv.output_size(x.shape[2:], kernel, stride, padding, dilation)
    if min(out) < 1:
        padded = tuple(n + 2 * p for n, p in zip(x.shape[2:], padding))
        span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        raise ValueError(f"{who}: kernel_size={kernel} with dilation={dilation} spans {span}, larger than "
                         f"the padded input {padded} (input shape {tuple(x.shape)}, padding={padding})")
    return out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, like ``torch.nn.functional.conv2d``.

    input (N, C, H, W), weight (O, C/groups, KH, KW), bias (O,) or None -> (N, O, OH, OW) with
    OH = (H + 2*padding - dilation*(KH - 1) - 1) // stride + 1 (OW alike). Channels split into
    ``groups`` groups; groups = C with O = k*C is a depthwise convolution.
    """
    x = check_input(input, ndims=(4,), layer="conv2d")
    w = check_input(weight, "weight", ndims=(4,), layer="conv2d")
    if w.device != x.device:
        raise ValueError(f"conv2d: weight is on {w.device} but input is on {x.device}")
    groups = check_count(groups, "groups")
    O, Cg, KH, KW = w.shape
    if O % groups:
        raise ValueError(f"conv2d: groups={groups} must divide out_channels={O} (weight shape {tuple(w.shape)})")
    if x.shape[1] != Cg * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels, expected in_channels={Cg * groups} "
                         f"(weight shape {tuple(w.shape)}, groups={groups})")
    check_vector(bias, O, "bias", x)
    stride, padding, dilation = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    window_args(x, (KH, KW), stride, padding, dilation, "conv2d")
    return _conv.Conv2d.apply(x, w, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


class Conv2d(Module):
    """2-D convolution layer over (N, in_channels, H, W); see ``conv2d``.

    weight (out_channels, in_channels/groups, KH, KW) and bias (out_channels,) are float32, drawn
    uniform in +-1/sqrt(fan_in), fan_in = in_channels/groups * KH * KW: PyTorch's default
    (kaiming_uniform_ with a=sqrt(5) for the weight), from ``cubn.random`` (see ``cubn.manual_seed``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True):
        super().__init__()
        self.in_channels = check_count(in_channels, "in_channels")
        self.out_channels = check_count(out_channels, "out_channels")
        self.groups = check_count(groups, "groups")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name}={getattr(self, name)} must be divisible by groups={self.groups}")
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        self.dilation = pair(dilation, "dilation", 1)
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound, rng = 1 / math.sqrt(fan_in), random.get_rng()
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(numpy.float32))
        self.register_parameter("bias", Parameter(rng.uniform(-bound, bound, self.out_channels).astype(numpy.float32))
                                if bias else None)

    def forward(self, input):
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")
