"""RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * weight over the trailing dims.

No centering and no bias. ``eps=None`` uses the machine epsilon of the
input's dtype, as PyTorch does.
"""
import numpy

from . import functional as F
from .checks import check_eps, normalized_shape_of
from .module import Module, Parameter


class RMSNorm(Module):
    def __init__(self, normalized_shape, eps=None, elementwise_affine=True):
        super().__init__()
        self.normalized_shape = normalized_shape_of(normalized_shape)
        self.eps = None if eps is None else check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.register_parameter("weight", Parameter(numpy.ones(self.normalized_shape, numpy.float32))
                                if self.elementwise_affine else None)

    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
