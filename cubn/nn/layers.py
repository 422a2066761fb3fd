"""Small layers for CNNs: Flatten, Dropout, activations and losses, and the functional forms that are new here.

PyTorch's names, arguments and defaults. Conventions:

* ``leaky_relu`` / ``LeakyReLU``: slope ``negative_slope`` (default 0.01) for x <= 0.
* ``gelu`` / ``GELU``: exact x * Phi(x) by default, ``approximate='tanh'`` for the tanh formula.
* ``dropout`` / ``Dropout``: inverted dropout (kept values scaled by 1/(1-p)), p in [0, 1); the
  identity in eval mode; masks come from the global generator (``cubn.manual_seed`` repeats them).
* Losses take ``reduction`` 'mean' (default), 'sum' or 'none'.
"""
import math
import numbers

from .. import backend
from ..ops import activation as _act
from ..ops import math as _math
from .checks import check_input
from .module import Module


def _p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be a number in [0, 1), got {p!r}")
    return float(p)


def _slope(negative_slope):
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
            or not math.isfinite(negative_slope):
        raise TypeError(f"negative_slope must be a finite real number, got {negative_slope!r}")
    return float(negative_slope)


def _approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def _reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


# ---- functional ------------------------------------------------------------------
def mse_loss(input, target, reduction="mean"):
    """``torch.nn.functional.mse_loss``: (input - target)^2, averaged, summed or per element."""
    return MSELoss(reduction)(input, target)


def nll_loss(input, target, reduction="mean"):
    """``torch.nn.functional.nll_loss`` of log-probabilities ``input`` (N, C) and class indices ``target`` (N,)."""
    x = check_input(input, min_ndim=2)
    if x.ndim != 2:
        raise ValueError(f"nll_loss: input must be (N, C) log-probabilities, got shape {tuple(x.shape)}")
    t = target.data if hasattr(target, "data") else target
    xp = backend.get_array_module(x.data)
    t = xp.asarray(t)
    if t.dtype.kind not in "iu" or t.shape != (x.shape[0],):
        raise ValueError(f"nll_loss: target must be ({x.shape[0]},) class indices, got {t.dtype} {t.shape}")
    if t.size and (int(t.min()) < 0 or int(t.max()) >= x.shape[1]):
        raise ValueError(f"nll_loss: target holds classes outside [0, {x.shape[1]})")
    loss = -x[xp.arange(x.shape[0]), t]
    reduction = _reduction(reduction)
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def leaky_relu(input, negative_slope=0.01):
    return _act.LeakyReLU.apply(check_input(input, min_ndim=0), negative_slope=_slope(negative_slope))


def gelu(input, approximate="none"):
    return _act.GELU.apply(check_input(input, min_ndim=0), approximate=_approximate(approximate))


def silu(input):
    return _act.SiLU.apply(check_input(input, min_ndim=0))


def dropout(input, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p); ``input`` unchanged if not training."""
    x, p = check_input(input, min_ndim=0), _p(p)
    return _act.Dropout.apply(x, p=p) if training and p > 0 else x


# ---- layers ----------------------------------------------------------------------
class ReLU(Module):
    def forward(self, input):
        return _math.relu(input)


class Identity(Module):
    def forward(self, input):
        return input


class Flatten(Module):
    """Merge dimensions start_dim..end_dim (default: all but the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return _math.flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = _p(p)

    def forward(self, input):
        return dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = _slope(negative_slope)

    def forward(self, input):
        return leaky_relu(input, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = _approximate(approximate)

    def forward(self, input):
        return gelu(input, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def forward(self, input):
        return silu(input)


class Sigmoid(Module):
    def forward(self, input):
        return _math.sigmoid(input)


class Tanh(Module):
    def forward(self, input):
        return _math.tanh(input)


class Softmax(Module):
    """Softmax along ``dim`` (required: PyTorch's implicit choice of dim is deprecated)."""

    def __init__(self, dim):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def forward(self, input):
        return _math.softmax(input, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class CrossEntropyLoss(Module):
    """``cubn.nn.functional.cross_entropy`` as a layer: forward(logits, target) with integer class targets."""

    def __init__(self, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.reduction = _reduction(reduction)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        return _math.cross_entropy(input, target, self.reduction, self.label_smoothing)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


class MSELoss(Module):
    """Squared error (input - target)^2, averaged, summed or kept per element; target must have input's shape."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _reduction(reduction)

    def forward(self, input, target):
        x, t = check_input(input, min_ndim=0), check_input(target, "target", min_ndim=0)
        if x.shape != t.shape:
            raise ValueError(f"MSELoss: target must have the input's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        d = x - t
        loss = d * d
        return loss if self.reduction == "none" else loss.sum() if self.reduction == "sum" else loss.mean()

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
