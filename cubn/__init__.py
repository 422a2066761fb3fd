"""cubn: normalization layers with hand-written CUDA kernels, a NumPy twin for every op,
and a small tape-based autodiff over NumPy or CuPy arrays.

    import cubn
    x = cubn.tensor(data, requires_grad=True)          # NumPy path
    x = cubn.tensor(data, device="cuda")               # CuPy path, where a GPU answers
    y = cubn.nn.BatchNorm2d(16)(x)
"""
from . import backend
from .backend import has_gpu
from .random import manual_seed
from .cpu import get_num_threads, set_num_threads
from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"

from . import data, ops, nn, optim  # noqa: E402  (nn needs Tensor above)
from . import models, train  # noqa: E402
from .serialization import load, save  # noqa: E402
from .recompute import checkpoint  # noqa: E402
from .creation import (arange, bool_, empty, float16, float32, float64, from_dlpack, from_numpy, full, full_like,  # noqa: E402
                       int64, linspace, ones, ones_like, rand, randn, zeros, zeros_like)
from .ops.math import cat, stack, where  # noqa: E402

__all__ = ["get_num_threads", "set_num_threads", "Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "has_gpu", "backend",
           "manual_seed", "data", "ops", "nn", "optim", "models", "train", "save", "load", "__version__"]
__all__ += ["checkpoint", "arange", "bool_", "cat", "empty", "float16", "float32", "float64", "from_dlpack",
            "from_numpy", "full",
            "full_like", "int64", "linspace", "ones", "ones_like", "rand", "randn", "stack", "where", "zeros",
            "zeros_like"]
