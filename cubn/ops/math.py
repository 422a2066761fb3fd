"""General differentiable array ops: one ``Function`` per op, plus the plain function Tensor calls.

Every ``forward`` works on raw arrays with ``xp = get_array_module(x)`` (NumPy or CuPy);
every ``backward`` returns one gradient (or None) per input.

Conventions:
- Binary ops broadcast like NumPy; each input's gradient is summed back to its shape by
  ``unbroadcast``. A Python scalar, NumPy scalar or 0-d array on one side follows NumPy's
  "weak scalar" rule, so ``float32 tensor + 2.0`` stays float32 (while ``int tensor + 0.5``
  becomes float). A non-Tensor array joins the other operand's device.
- Axis arguments take an int, a tuple of ints or None (all axes); negative axes count from the end.
- ``max`` splits the gradient evenly among tied maxima (``torch.amax``'s rule).
"""
import collections
import math as _pymath
import numbers
import operator

import numpy

from .. import backend
from ..tensor import Function, Tensor, as_tensor


# ---- shared helpers ---------------------------------------------------------
def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes NumPy broadcasting added or stretched, so it has ``shape``."""
    lead = grad.ndim - len(shape)
    if lead:
        grad = grad.sum(axis=tuple(range(lead)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _axes(axis, ndim, name="axis"):
    """``axis`` (int, tuple of ints or None) as a tuple of distinct non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in items):
        raise TypeError(f"{name} must be an int, a tuple of ints or None, got {axis!r}")
    if not all(-ndim <= a < ndim for a in items):
        raise ValueError(f"{name}={axis!r} is out of range for a tensor with {ndim} dimensions")
    axes = tuple(int(a) % ndim for a in items)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name}={axis!r} repeats an axis")
    return axes


def _one_axis(axis, ndim, name="axis"):
    if isinstance(axis, (tuple, list)) or axis is None:
        raise TypeError(f"{name} must be an int, got {axis!r}")
    return _axes(axis, ndim, name)[0]


def _expand(grad, shape, axes):
    """Undo a reduction over ``axes`` (keepdims or not): broadcast ``grad`` back to ``shape``."""
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return backend.get_array_module(grad).broadcast_to(grad.reshape(kept), shape)


def _python_scalar(v):
    """A NumPy scalar or 0-d array as a Python number, which NumPy 2 treats as a weak scalar."""
    return v.item() if hasattr(v, "item") else v


def _operands(a, b):
    """Both operands as Tensors; see the module docstring for scalars and devices."""
    if isinstance(a, Tensor) == isinstance(b, Tensor):
        return as_tensor(a), as_tensor(b)
    if not isinstance(a, Tensor):
        return _operands(b, a)[::-1]
    xp = backend.get_array_module(a.data)
    if numpy.ndim(b) == 0:
        value = _python_scalar(b)
        b = xp.asarray(value, dtype=numpy.result_type(a.dtype, value))
    return a, Tensor(xp.asarray(b))


# ---- elementwise binary ops ---------------------------------------------------
class _Binary(Function):
    """``a op b`` with broadcasting; subclasses give ``compute`` and the two local gradients."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.compute(a, b)

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(self.grad_a(grad), self.a.shape) if need_a else None,
                unbroadcast(self.grad_b(grad), self.b.shape) if need_b else None)


class Add(_Binary):
    def compute(self, a, b): return a + b
    def grad_a(self, grad): return grad
    def grad_b(self, grad): return grad


class Sub(_Binary):
    def compute(self, a, b): return a - b
    def grad_a(self, grad): return grad
    def grad_b(self, grad): return -grad


class Mul(_Binary):
    def compute(self, a, b): return a * b
    def grad_a(self, grad): return grad * self.b
    def grad_b(self, grad): return grad * self.a


class Div(_Binary):
    def compute(self, a, b): return a / b
    def grad_a(self, grad): return grad / self.b
    def grad_b(self, grad): return -grad * self.a / (self.b * self.b)


def add(a, b): return Add.apply(*_operands(a, b))
def sub(a, b): return Sub.apply(*_operands(a, b))
def mul(a, b): return Mul.apply(*_operands(a, b))
def div(a, b): return Div.apply(*_operands(a, b))


_COMPARISONS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
                "le": operator.le, "gt": operator.gt, "ge": operator.ge}


def compare(a, b, op):
    """Elementwise comparison (``op`` one of eq, ne, lt, le, gt, ge): a bool Tensor, not differentiable."""
    if op not in _COMPARISONS:
        raise ValueError(f"op must be one of {sorted(_COMPARISONS)}, got {op!r}")
    a, b = _operands(a, b)
    return Tensor(_COMPARISONS[op](a.data, b.data))


class MatMul(Function):
    """``numpy.matmul`` semantics: 1-D operands are promoted and the added axis removed again;
    batch axes broadcast, and their gradients are summed back by ``unbroadcast``."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        a, b = self.a, self.b
        # Promote the 1-D operands and give grad the axes matmul dropped (b's first: grad may be 0-d).
        if b.ndim == 1:
            b, grad = b[:, None], xp.expand_dims(grad, -1)
        if a.ndim == 1:
            a, grad = a[None, :], xp.expand_dims(grad, -2)
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(grad @ xp.swapaxes(b, -1, -2), a.shape).reshape(self.a.shape) if need_a else None,
                unbroadcast(xp.swapaxes(a, -1, -2) @ grad, b.shape).reshape(self.b.shape) if need_b else None)


def matmul(a, b):
    a, b = _operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs operands with at least one dimension, got shapes {a.shape} and {b.shape}")
    return MatMul.apply(a, b)


# ---- elementwise unary ops ----------------------------------------------------
class Neg(Function):
    def forward(self, x): return -x
    def backward(self, grad): return -grad


class Pow(Function):
    def forward(self, x, exponent):
        self.x, self.exponent = x, exponent
        return x ** exponent

    def backward(self, grad):
        if self.exponent == 0:  # d/dx x**0 = 0 even at x = 0, where the formula below gives 0 * inf
            return backend.get_array_module(grad).zeros_like(grad)
        return grad * (self.exponent * self.x ** (self.exponent - 1))


class Exp(Function):
    def forward(self, x):
        self.out = backend.get_array_module(x).exp(x)
        return self.out

    def backward(self, grad): return grad * self.out


class Log(Function):
    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log(x)

    def backward(self, grad): return grad / self.x


class Sqrt(Function):
    def forward(self, x):
        self.out = backend.get_array_module(x).sqrt(x)
        return self.out

    def backward(self, grad): return grad / (2 * self.out)


class Relu(Function):
    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, grad): return grad * self.positive


class Sigmoid(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))  # <= 1, so neither branch overflows
        self.out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.out

    def backward(self, grad): return grad * self.out * (1 - self.out)


class Tanh(Function):
    def forward(self, x):
        self.out = backend.get_array_module(x).tanh(x)
        return self.out

    def backward(self, grad): return grad * (1 - self.out * self.out)


class Abs(Function):
    def forward(self, x):
        xp = backend.get_array_module(x)
        self.sign = xp.sign(x)
        return xp.abs(x)

    def backward(self, grad): return grad * self.sign     # 0 at x == 0, as torch's


class Clamp(Function):
    def forward(self, x, low, high):
        xp = backend.get_array_module(x)
        self.inside = xp.ones(x.shape, bool)
        if low is not None:
            self.inside &= x >= low
        if high is not None:
            self.inside &= x <= high
        return xp.clip(x, low, high)

    def backward(self, grad): return grad * self.inside    # torch's: through where low <= x <= high


class Cast(Function):
    def forward(self, x, dtype):
        self.source = x.dtype
        return x.astype(dtype, copy=True)

    def backward(self, grad): return grad.astype(self.source)


def abs(x): return Abs.apply(x)


def clamp(x, min=None, max=None):
    """``torch.clamp``: values below ``min`` become min, above ``max`` max (either may be None)."""
    if min is None and max is None:
        raise ValueError("clamp needs min or max")
    return Clamp.apply(x, low=_python_scalar(min) if min is not None else None,
                       high=_python_scalar(max) if max is not None else None)


def cast(x, dtype):
    """A copy of ``x`` in ``dtype``: differentiable to a float dtype, cut from the tape to any other
    (as torch's ``.float()`` / ``.long()``)."""
    x = as_tensor(x)
    dtype = numpy.dtype(dtype)
    if dtype.kind != "f":
        return Tensor(x.data.astype(dtype))
    return Cast.apply(x, dtype=dtype)


def unsqueeze(x, dim):
    """``torch.unsqueeze``: a dimension of size 1 inserted at ``dim`` (in [-ndim - 1, ndim])."""
    x = as_tensor(x)
    (d,) = _axes(dim, x.ndim + 1, "dim")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def squeeze(x, dim=None):
    """``torch.squeeze``: dimensions of size 1 removed (all, or ``dim``; one not of size 1 stays)."""
    x = as_tensor(x)
    dims = range(x.ndim) if dim is None else _axes(dim, x.ndim, "dim")
    drop = {d for d in dims if x.shape[d] == 1}
    return reshape(x, tuple(n for d, n in enumerate(x.shape) if d not in drop))


def neg(x): return Neg.apply(x)
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def relu(x): return Relu.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def tanh(x): return Tanh.apply(x)


def pow(x, exponent):
    """``x ** exponent`` for a Python (or NumPy) real ``exponent``."""
    if not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
        raise TypeError(f"exponent must be a real number, got {type(exponent).__name__}")
    return Pow.apply(x, exponent=_python_scalar(exponent))


# ---- reductions ---------------------------------------------------------------------
class Sum(Function):
    def forward(self, x, axes, keepdims):
        self.shape, self.axes = x.shape, axes
        return x.sum(axis=axes, keepdims=keepdims)

    def backward(self, grad): return _expand(grad, self.shape, self.axes)


class Mean(Sum):
    def forward(self, x, axes, keepdims):
        self.shape, self.axes = x.shape, axes
        self.count = _pymath.prod(x.shape[a] for a in axes)
        return x.mean(axis=axes, keepdims=keepdims)  # not sum / count: a float16 sum may overflow

    def backward(self, grad): return super().backward(grad) / self.count


class Max(Function):
    """Gradient split evenly among the tied maxima of each reduced group."""

    def forward(self, x, axes, keepdims):
        self.x, self.axes = x, axes
        self.out = x.max(axis=axes, keepdims=keepdims)
        return self.out

    def backward(self, grad):
        is_max = self.x == _expand(self.out, self.x.shape, self.axes)
        ties = _expand(is_max.sum(axis=self.axes, keepdims=True), self.x.shape, self.axes)
        return _expand(grad, self.x.shape, self.axes) * is_max / ties


def _dim(fn, dim, keepdim, axis, keepdims):
    """(dim, keepdim, the name the caller used): PyTorch's ``dim``/``keepdim``, with NumPy's
    ``axis``/``keepdims`` accepted as aliases."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{fn}: give dim or its alias axis, not both")
        return axis, bool(keepdim if keepdims is None else keepdims), "axis"
    return dim, bool(keepdim if keepdims is None else keepdims), "dim"


def sum(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Sum over ``dim`` (an int, a tuple or None for all), as ``torch.sum``."""
    x = as_tensor(x)
    dim, keepdim, name = _dim("sum", dim, keepdim, axis, keepdims)
    return Sum.apply(x, axes=_axes(dim, x.ndim, name), keepdims=keepdim)


def mean(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Mean over ``dim`` (an int, a tuple or None for all), as ``torch.mean``."""
    x = as_tensor(x)
    dim, keepdim, name = _dim("mean", dim, keepdim, axis, keepdims)
    return Mean.apply(x, axes=_axes(dim, x.ndim, name), keepdims=keepdim)


def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    """``torch.var``: two-pass, sum((x - mean)^2) / (n - correction); correction 1 (unbiased) by default,
    ``unbiased=False`` or ``correction=0`` for the biased estimator."""
    x = as_tensor(x)
    if unbiased is not None and correction is not None:
        raise TypeError("var: give unbiased or correction, not both")
    correction = (1 if unbiased is None or unbiased else 0) if correction is None else correction
    dim, keepdim, name = _dim("var", dim, keepdim, axis, keepdims)
    axes = _axes(dim, x.ndim, name)
    n = _pymath.prod(x.shape[a] for a in axes)
    d = x - mean(x, axes, keepdim=True)
    return sum(d * d, axes, keepdim) / float(n - correction)


def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
    """``torch.std``: sqrt of ``var`` with the same arguments."""
    return sqrt(var(x, dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims))


def amax(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Largest value over ``dim`` (an int, a tuple or None for all), as ``torch.amax``; tied maxima
    share the gradient equally."""
    x = as_tensor(x)
    dim, keepdim, name = _dim("amax", dim, keepdim, axis, keepdims)
    if x.size == 0:
        raise ValueError(f"amax of an empty tensor of shape {x.shape}")
    return Max.apply(x, axes=_axes(dim, x.ndim, name), keepdims=keepdim)


def amin(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """Smallest value over ``dim``, as ``torch.amin`` (-amax(-x): tied minima share the gradient)."""
    return neg(amax(neg(x), dim, keepdim, axis=axis, keepdims=keepdims))


# the (values, indices) pair that torch.max/torch.min return along a dim
MaxMin = collections.namedtuple("MaxMin", ["values", "indices"])


def _extreme(fn, extreme, arg, x, dim, keepdim, axis, keepdims):
    x = as_tensor(x)
    dim, keepdim, name = _dim(fn, dim, keepdim, axis, keepdims)
    if dim is None:
        return extreme(x)
    if isinstance(dim, (tuple, list)):
        raise TypeError(f"{fn} takes one {name} (then it returns values and indices); a{fn} reduces several")
    (d,) = _axes(dim, x.ndim, name)
    return MaxMin(extreme(x, d, keepdim), _indices(x, arg, d, keepdim))


def _indices(x, arg, d, keepdim):
    """x.data.argmax/argmin along axis d as an int64 Tensor (off the tape), d kept with size 1 if keepdim."""
    indices = getattr(x.data, arg)(axis=d)
    if keepdim:
        indices = backend.get_array_module(indices).expand_dims(indices, d)
    return Tensor(indices.astype("int64"))


def argmax(x, dim=None, keepdim=False):
    """``torch.argmax``: the index of the first maximum (of the flattened tensor when dim is None)."""
    x = as_tensor(x)
    if dim is None:
        return Tensor(backend.get_array_module(x.data).asarray(x.data.argmax(), dtype="int64"))
    (d,) = _axes(dim, x.ndim, "dim")
    return _indices(x, "argmax", d, keepdim)


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """As ``torch.max``: the largest value of x, or along ``dim`` the named pair (values, indices)
    (the first index of the maximum; the gradient of values is shared among tied maxima)."""
    return _extreme("max", amax, "argmax", x, dim, keepdim, axis, keepdims)


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):
    """As ``torch.min``: the smallest value of x, or along ``dim`` the named pair (values, indices)."""
    return _extreme("min", amin, "argmin", x, dim, keepdim, axis, keepdims)


# ---- shape ops ------------------------------------------------------------------
class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        return x.reshape(shape)

    def backward(self, grad): return grad.reshape(self.shape)


class Transpose(Function):
    def forward(self, x, axes):
        self.inverse = tuple(numpy.argsort(axes))
        return x.transpose(axes)

    def backward(self, grad): return grad.transpose(self.inverse)


class Getitem(Function):
    """``x[index]``; backward scatters with ``add.at`` so repeated indices accumulate."""

    def forward(self, x, index):
        self.shape, self.index = x.shape, index
        return x[index]

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        xp.add.at(dx, self.index, grad)
        return dx


def reshape(x, shape):
    return Reshape.apply(x, shape=(shape,) if isinstance(shape, numbers.Integral) else tuple(shape))


def transpose(x, axes=None):
    """Permute axes (reverse them when ``axes`` is None)."""
    x = as_tensor(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else _axes(tuple(axes), x.ndim, "axes")
    if len(axes) != x.ndim:
        raise ValueError(f"axes={axes!r} must name each of the {x.ndim} axes once")
    return Transpose.apply(x, axes=axes)


def swapdims(x, dim0, dim1):
    """``torch.transpose(x, dim0, dim1)``: x with dimensions dim0 and dim1 swapped (the same dim: x itself)."""
    x = as_tensor(x)
    a, b = (_axes(d, x.ndim, name)[0] for d, name in ((dim0, "dim0"), (dim1, "dim1")))
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return Transpose.apply(x, axes=tuple(order))


def flatten(x, start_dim=0, end_dim=-1):
    """Merge axes ``start_dim..end_dim`` (inclusive) into one, like ``torch.flatten``."""
    x = as_tensor(x)
    shape = x.shape or (1,)
    start = _one_axis(start_dim, len(shape), "start_dim")
    end = _one_axis(end_dim, len(shape), "end_dim")
    if start > end:
        raise ValueError(f"start_dim={start_dim} comes after end_dim={end_dim}")
    merged = _pymath.prod(shape[start:end + 1])                # not -1: an empty batch has no size to infer from
    return reshape(x, shape[:start] + (merged,) + shape[end + 1:])


def getitem(x, index):
    """Basic slicing, integers, None, Ellipsis and integer (or bool) array indexing.

    Tensors and lists inside ``index`` become arrays on ``x``'s device.
    """
    x = as_tensor(x)
    xp = backend.get_array_module(x.data)

    def part(i):
        if isinstance(i, Tensor):
            i = i.data
        return xp.asarray(i) if isinstance(i, (list, numpy.ndarray)) or backend.is_cupy(i) else i

    index = tuple(map(part, index)) if isinstance(index, tuple) else part(index)
    return Getitem.apply(x, index=index)


# ---- softmax family ----------------------------------------------------------------
def _log_softmax(x, axis):
    xp = backend.get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)  # exp(shifted) <= 1: no overflow
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, x, axis):
        self.axis = axis
        self.out = _log_softmax(x, axis)
        return self.out

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        return grad - xp.exp(self.out) * grad.sum(axis=self.axis, keepdims=True)


class Softmax(Function):
    def forward(self, x, axis):
        self.axis = axis
        self.out = backend.get_array_module(x).exp(_log_softmax(x, axis))
        return self.out

    def backward(self, grad):
        return self.out * (grad - (grad * self.out).sum(axis=self.axis, keepdims=True))


def softmax(x, dim=-1, *, axis=None):
    """Softmax along ``dim`` (``axis`` is an alias). torch.softmax has no default dim; -1 here."""
    x = as_tensor(x)
    return Softmax.apply(x, axis=_one_axis(dim if axis is None else axis, x.ndim, "dim" if axis is None else "axis"))


def log_softmax(x, dim=-1, *, axis=None):
    """log(softmax(x)) along ``dim`` (``axis`` is an alias), computed without forming softmax."""
    x = as_tensor(x)
    return LogSoftmax.apply(x, axis=_one_axis(dim if axis is None else axis, x.ndim, "dim" if axis is None else "axis"))


class CrossEntropy(Function):
    """Fused log_softmax + negative log-likelihood over the class axis 1; see ``cross_entropy``."""

    def forward(self, logits, target, reduction, label_smoothing):
        xp = backend.get_array_module(logits)
        k = logits.shape[1]
        classes = xp.arange(k).reshape((k,) + (1,) * (logits.ndim - 2))
        onehot = (xp.expand_dims(target, 1) == classes).astype(logits.dtype)
        # PyTorch's smoothed target: q = (1 - s) * onehot + s / K
        self.q = onehot * (1 - label_smoothing) + label_smoothing / k
        logp = _log_softmax(logits, 1)
        self.probs, self.reduction = xp.exp(logp), reduction
        loss = -(self.q * logp).sum(axis=1)
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        n = self.probs.size // self.probs.shape[1]
        grad = xp.expand_dims(grad, 1) if self.reduction == "none" else grad / n if self.reduction == "mean" else grad
        return (self.probs - self.q) * grad, None


def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy, like ``torch.nn.functional.cross_entropy`` without weights or ignore_index.

    logits: float (N, K) or (N, K, d1, ...); target: integer class indices in [0, K) of shape
    (N,) or (N, d1, ...). ``reduction`` is "mean" (over all N*d1*... losses), "sum" or "none"
    (shape of target). ``label_smoothing`` s in [0, 1) mixes the one-hot target with the uniform
    distribution: q = (1 - s) * onehot + s / K. The gradient is (softmax - q) times the upstream one.
    """
    logits = as_tensor(logits)
    target = target.data if isinstance(target, Tensor) else target
    target = backend.get_array_module(logits.data).asarray(target)
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (N, K) or (N, K, d1, ...), got {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    expected = logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise ValueError(f"target must have shape {expected} for logits of shape {logits.shape}, got {target.shape}")
    k = logits.shape[1]
    if target.size and (int(target.min()) < 0 or int(target.max()) >= k):
        raise ValueError(f"target class indices must lie in [0, {k}), got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    return CrossEntropy.apply(logits, target, reduction=reduction, label_smoothing=float(label_smoothing))


# ---- joining and selecting ---------------------------------------------------------
class Cat(Function):
    def forward(self, *xs, axis):
        self.axis, self.sizes = axis, [x.shape[axis] for x in xs]
        return backend.get_array_module(xs[0]).concatenate(xs, axis=axis)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        return tuple(xp.split(grad, numpy.cumsum(self.sizes)[:-1].tolist(), axis=self.axis))


def _joined(fn, tensors):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{fn} needs at least one tensor")
    return tensors


def cat(tensors, dim=0):
    """``torch.cat``: the tensors joined along an existing dimension ``dim``."""
    tensors = _joined("cat", tensors)
    (d,) = _axes(dim, tensors[0].ndim, "dim")
    for t in tensors[1:]:
        if t.ndim != tensors[0].ndim or t.shape[:d] + t.shape[d + 1:] != tensors[0].shape[:d] + tensors[0].shape[d + 1:]:
            raise ValueError(f"cat along dim {dim}: shapes {tensors[0].shape} and {t.shape} differ elsewhere")
    return Cat.apply(*tensors, axis=d)


def stack(tensors, dim=0):
    """``torch.stack``: the tensors (all of one shape) joined along a new dimension ``dim``."""
    tensors = _joined("stack", tensors)
    if any(t.shape != tensors[0].shape for t in tensors):
        raise ValueError(f"stack needs tensors of one shape, got {[t.shape for t in tensors]}")
    return cat([unsqueeze(t, dim) for t in tensors], dim)


class Where(Function):
    def forward(self, a, b, condition):
        self.condition, self.shapes = condition, (a.shape, b.shape)
        return backend.get_array_module(a).where(condition, a, b)

    def backward(self, grad):
        return (unbroadcast(grad * self.condition, self.shapes[0]),
                unbroadcast(grad * ~self.condition, self.shapes[1]))


def where(condition, input, other):
    """``torch.where(condition, input, other)``: input where condition holds, else other (broadcast)."""
    condition = condition.data if isinstance(condition, Tensor) else condition
    a, b = _operands(input, other)
    condition = backend.get_array_module(a.data).asarray(condition)
    if condition.dtype != bool:
        raise TypeError(f"where: condition must be a bool tensor, got dtype {condition.dtype}")
    shape = numpy.broadcast_shapes(condition.shape, a.shape, b.shape)
    xp = backend.get_array_module(a.data)
    return Where.apply(a, b, condition=xp.broadcast_to(condition, shape))


# ---- devices ---------------------------------------------------------------------
class ToDevice(Function):
    def forward(self, x, device):
        self.source = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, grad): return backend.to_device(grad, self.source)


def to_device(x, device):
    """``x`` on ``device`` ('cpu' or 'cuda'); the gradient travels back to where ``x`` was."""
    return ToDevice.apply(x, device=device)
