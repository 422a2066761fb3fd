"""Argument checks shared by the functional API and the modules.

Each raises ValueError or TypeError naming the argument, what was expected and
what was given, before any computation runs.
"""
import math
import numbers

from .. import backend
from ..tensor import Tensor


def array_of(x):
    """The raw array behind a Tensor, array or None."""
    return x.data if isinstance(x, Tensor) else x


def check_input(x, name="input", min_ndim=1, ndims=None, layer=None):
    """A floating-point Tensor or array of an accepted rank; returns it as a Tensor."""
    if not isinstance(x, Tensor):
        if not hasattr(x, "dtype"):
            raise TypeError(f"{name} must be a cubn.Tensor or an array, got {type(x).__name__}")
        x = Tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point (float16, float32 or float64), got dtype {x.dtype}")
    who = f"{layer}: " if layer else ""
    if ndims is not None and x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{who}{name} must be {want}, got {x.ndim}-D input of shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{who}{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_vector(v, length, name, x=None):
    """None, or a floating-point Tensor/array of shape (length,) on the same device as ``x``."""
    return check_shaped(v, (length,), name, x)


def check_shaped(v, shape, name, x=None):
    if v is None:
        return None
    a = array_of(v)
    if not hasattr(a, "shape"):
        raise TypeError(f"{name} must be a cubn.Tensor, an array or None, got {type(v).__name__}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {a.dtype}")
    if x is not None and backend.device_of(a) != backend.device_of(array_of(x)):
        raise ValueError(f"{name} is on {backend.device_of(a)} but input is on {backend.device_of(array_of(x))}")
    return v


def check_eps(eps, name="eps"):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return float(eps)


def check_fraction(value, name, allow_none=False):
    """A number in [0, 1] (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number in [0, 1]{extra}, got {value!r}")
    return float(value)


def check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def normalized_shape_of(normalized_shape, name="normalized_shape"):
    """An int or a sequence of ints -> a tuple of positive ints."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {normalized_shape!r}") from None
    if not shape or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


class _Unset:
    """The default of ``momentum`` where ``decay`` is the alternative: "not given", so both can be told apart."""

    def __repr__(self):
        return "<unset>"


UNSET = _Unset()


def check_momentum(momentum, decay, default, allow_none=False):
    """Resolve the two spellings of the running-average weight; returns (momentum, decay).

    ``momentum`` has PyTorch's meaning, the weight of the new batch:
    ``new = (1 - momentum) * old + momentum * batch``. ``decay`` has the
    Keras/Chainer/Flax meaning, the weight of the old value:
    ``new = decay * old + (1 - decay) * batch``. At most one may be given
    (``momentum=UNSET`` means not given, then ``default`` applies); the
    returned momentum is always in PyTorch's meaning (``1 - decay``), and the
    returned decay is None unless ``decay`` was given.
    """
    if decay is None:
        momentum = default if momentum is UNSET else momentum
        return check_fraction(momentum, "momentum", allow_none=allow_none), None
    if momentum is not UNSET:
        raise ValueError(f"give either momentum= (PyTorch's meaning, the weight of the new batch) or decay= "
                         f"(Keras/Chainer/Flax meaning, the weight of the old value), not both: got "
                         f"momentum={momentum!r} and decay={decay!r}")
    decay = check_fraction(decay, "decay")
    return 1.0 - decay, decay


def check_choice(value, name, choices):
    """``value`` must be one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value
