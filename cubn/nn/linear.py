"""Linear layer: y = x @ weight.T + bias, initialized like PyTorch's (uniform in +-1/sqrt(in_features))."""
import math

import numpy

from .. import random
from . import functional as F
from .checks import check_count
from .module import Module, Parameter


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        # PyTorch's kaiming_uniform_(a=sqrt(5)) comes down to this bound for both weight and bias.
        bound = 1.0 / math.sqrt(self.in_features)
        rng = random.get_rng()
        self.weight = Parameter(rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(numpy.float32))
        self.register_parameter("bias", Parameter(rng.uniform(-bound, bound, self.out_features).astype(numpy.float32))
                                if bias else None)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
