"""``torch.nn.utils``'s ``clip_grad_norm_``."""
import math

import numpy

from .. import backend
from ..tensor import Tensor


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale the gradients of ``parameters`` in place so that their joint ``norm_type`` norm is at most
    ``max_norm`` (factor max_norm / (norm + 1e-6), as torch); returns the norm before clipping as a Tensor."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return Tensor(numpy.float32(0.0))
    if math.isinf(norm_type):
        total = max(float(backend.get_array_module(g).abs(g).max()) for g in grads)
    else:
        total = sum(float((backend.get_array_module(g).abs(g.astype("float64")) ** norm_type).sum())
                    for g in grads) ** (1.0 / norm_type)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1:
        for p in params:
            if p.grad is not None:
                p.grad *= p.grad.dtype.type(coef)
    return Tensor(numpy.float32(total))
