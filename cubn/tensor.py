"""The tape: Tensor, Function and reverse-mode differentiation.

A Tensor wraps one array (``numpy.ndarray`` or ``cupy.ndarray``) in ``.data``.
Every differentiable op is a ``Function`` subclass with

    forward(*arrays, **constants) -> array       computes the result on raw arrays
    backward(grad) -> one grad (or None) per input   the vector-Jacobian product

``Function.apply(*inputs, **constants)`` runs ``forward`` and, when gradients
are wanted, remembers the Function as the output's ``_ctx`` together with its
inputs (``parents``). That chain of ``_ctx`` links is the tape.

``Tensor.backward()`` sorts the graph topologically with an iterative DFS (no
recursion limit, so a 10,000-layer chain works), walks it in reverse, calls
each ``backward`` once and accumulates the gradient of every input with ``+=``.
Leaves (tensors made by the user with ``requires_grad=True``) keep their
gradient in ``.grad``; the graph is freed as it is walked. Callbacks given to
``on_backward_end`` run after every backward (DistributedDataParallel reduces
the gradients there).

This file knows nothing about devices or kernels: ops live in ``cubn.ops``.
"""
import contextlib
import threading

import numpy

from . import backend

_state = threading.local()


def is_grad_enabled():
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Within this block no op records itself on the tape (like ``torch.no_grad``)."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


_FREED = "freed"  # stands in _ctx of a node whose graph a backward already walked
_backward_end = {}   # id -> callback, run in registration order at the end of every backward


class _CallbackHandle:
    def __init__(self, key):
        self.key = key

    def remove(self):
        _backward_end.pop(self.key, None)


def on_backward_end(fn):
    """Call ``fn()`` at the end of every ``Tensor.backward()``, once every leaf has its gradient.

    Returns a handle whose ``remove()`` unregisters ``fn``.
    """
    key = object()
    _backward_end[key] = fn
    return _CallbackHandle(key)


class Function:
    """One op on the tape. Subclasses implement ``forward`` and ``backward``.

    ``self.parents`` holds the input Tensors (None where an optional input was
    not given); ``self.needs_input_grad[i]`` tells backward which gradients are
    wanted, so it may skip work for the others by returning None.
    """

    def __init__(self, *parents):
        self.parents = parents
        self.needs_input_grad = tuple(p is not None and p.requires_grad for p in parents)

    def forward(self, *arrays, **constants):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def run(cls, *inputs, **constants):
        """Apply the op and return ``(output Tensor, the Function instance)``.

        The instance is useful when forward leaves side results on ``self``
        (a norm's batch statistics, for instance); most callers use ``apply``.
        """
        parents = tuple(None if x is None else as_tensor(x) for x in inputs)
        fn = cls(*parents)
        out = fn.forward(*(None if p is None else p.data for p in parents), **constants)
        wants_grad = is_grad_enabled() and any(fn.needs_input_grad)
        result = Tensor(out, requires_grad=wants_grad)
        if wants_grad:
            result._ctx = fn
        return result, fn

    @classmethod
    def apply(cls, *inputs, **constants):
        return cls.run(*inputs, **constants)[0]

    def __repr__(self):
        return type(self).__name__


class Tensor:
    """An array with an optional gradient; see the module docstring."""

    __array_priority__ = 1000  # numpy_array + tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if not (isinstance(data, numpy.ndarray) or backend.is_cupy(data)):
            data = numpy.asarray(data)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        if device is not None:
            data = backend.to_device(data, device)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"requires_grad=True needs a floating-point tensor, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None

    # ---- properties -------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: _Size(self.data.size, self.data.shape))
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)
    T = property(lambda self: self.permute(*reversed(range(self.ndim))))   # the dims reversed, as torch's .T

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._ctx!r}" if self._ctx not in (None, _FREED) else ""
        return f"Tensor({self.data!r}, device='{self.device}'{grad}{op})"

    # ---- conversion -------------------------------------------------------
    def numpy(self):
        """The data as a NumPy array (copied from the GPU when it lives there)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    # one-element tensors in Python expressions, as torch's: `if loss > 1:`, float(t), f"{t:.4f}"
    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous (use .any() or .all())")
        return bool(self.item())

    def __float__(self): return float(self.item())
    def __int__(self): return int(self.item())

    def __format__(self, spec):
        if not spec:
            return str(self)
        if self.data.size != 1:
            raise TypeError(f"format spec {spec!r} for a tensor of shape {self.shape}: only one-element tensors")
        return format(self.item(), spec)

    def numel(self): return int(self.data.size)
    def dim(self): return self.data.ndim

    def tolist(self):
        return self.numpy().tolist()

    # DLPack: zero-copy exchange with NumPy, PyTorch, JAX, CuPy (cubn.from_dlpack is the way in)
    def __dlpack__(self, *args, **kwargs):
        if self.requires_grad:
            raise BufferError("cannot export a tensor that requires grad through DLPack; use tensor.detach()")
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def to(self, *args, dtype=None):
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or ``to(dtype=...)``: a tensor on the device
        ('cpu' or 'cuda') in the dtype. Differentiable, like torch's ``.to``."""
        devices = [a for a in args if isinstance(a, str)]
        dtypes = [a for a in args if not isinstance(a, str)] + ([dtype] if dtype is not None else [])
        if len(devices) > 1 or len(dtypes) > 1:
            raise TypeError(f"to() takes one device and one dtype, got {args!r} dtype={dtype!r}")
        out = self
        if dtypes:
            out = _math().cast(out, dtypes[0])
        return _math().to_device(out, devices[0]) if devices else out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def detach(self):
        """Same data, cut from the tape."""
        return Tensor(self.data)

    def clone(self): return _math().cast(self, self.dtype)             # a copy, on the tape
    def float(self): return _math().cast(self, numpy.float32)
    def double(self): return _math().cast(self, numpy.float64)
    def half(self): return _math().cast(self, numpy.float16)
    def long(self): return _math().cast(self, numpy.int64)

    def requires_grad_(self, flag=True):
        if flag and self.dtype.kind != "f":
            raise TypeError(f"requires_grad=True needs a floating-point tensor, got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    # ---- reverse mode ----------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``.

        ``grad`` (array or Tensor, same shape as self) is required unless self
        has exactly one element. The graph is freed afterwards.
        """
        if self._ctx is _FREED:
            raise RuntimeError("backward() through a graph a second time: the first backward freed it")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input had requires_grad=True, or it was made under no_grad())")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() needs grad= for a non-scalar output of shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad)
            if grad.shape != self.shape:
                raise ValueError(f"backward(grad=...) needs shape {self.shape}, got {grad.shape}")
            grad = grad.astype(self.dtype, copy=False)

        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            fn = node._ctx
            if fn is _FREED:  # reached through another output that shares an already-walked graph
                raise RuntimeError("backward() through a graph a second time: an earlier backward freed it")
            if fn is not None:
                node._ctx = _FREED
            if g is None:  # every path to this node had a None gradient
                continue
            if fn is None:  # a leaf: keep its gradient
                node.grad = g.copy() if node.grad is None else _accumulate(node.grad, g)
                continue
            in_grads = fn.backward(g)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            for parent, pg in zip(fn.parents, in_grads):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    raise RuntimeError(f"{fn!r}.backward returned a gradient of shape {pg.shape} "
                                       f"for an input of shape {parent.shape}")
                # asarray: NumPy turns 0-d results into scalars; the parent's module, not the
                # root's, so graphs that cross devices with .to() work.
                pg = backend.get_array_module(parent.data).asarray(pg, dtype=parent.dtype)
                key = id(parent)
                # Not +=: a backward may hand the same array to several inputs (or pass grad= through).
                grads[key] = pg if key not in grads else grads[key] + pg
        for fn in list(_backward_end.values()):
            fn()

    # ---- operators (implemented in cubn.ops.math) -------------------------
    def __add__(self, other): return _math().add(self, other)
    def __radd__(self, other): return _math().add(other, self)
    def __sub__(self, other): return _math().sub(self, other)
    def __rsub__(self, other): return _math().sub(other, self)
    def __mul__(self, other): return _math().mul(self, other)
    def __rmul__(self, other): return _math().mul(other, self)
    def __truediv__(self, other): return _math().div(self, other)
    def __rtruediv__(self, other): return _math().div(other, self)
    def __pow__(self, exponent): return _math().pow(self, exponent)
    def __neg__(self): return _math().neg(self)
    def __matmul__(self, other): return _math().matmul(self, other)
    def __rmatmul__(self, other): return _math().matmul(other, self)
    def __getitem__(self, index): return _math().getitem(self, index)

    def __setitem__(self, index, value):
        """In-place assignment, for tensors off the tape (as data preparation does)."""
        if self.requires_grad:
            raise RuntimeError("in-place assignment to a tensor that requires grad would corrupt its gradient; "
                               "assign into .data, or into a .detach()ed copy")
        xp = backend.get_array_module(self.data)
        self.data[index] = value.data if isinstance(value, Tensor) else xp.asarray(value)
    def __eq__(self, other): return _math().compare(self, other, "eq")
    def __ne__(self, other): return _math().compare(self, other, "ne")
    def __lt__(self, other): return _math().compare(self, other, "lt")
    def __le__(self, other): return _math().compare(self, other, "le")
    def __gt__(self, other): return _math().compare(self, other, "gt")
    def __ge__(self, other): return _math().compare(self, other, "ge")
    __hash__ = object.__hash__

    # reductions take torch's dim=/keepdim= (numpy's axis=/keepdims= as aliases); max/min along a dim
    # return (values, indices) as torch's do
    def sum(self, *args, **kwargs): return _math().sum(self, *args, **kwargs)
    def mean(self, *args, **kwargs): return _math().mean(self, *args, **kwargs)
    def max(self, *args, **kwargs): return _math().max(self, *args, **kwargs)
    def min(self, *args, **kwargs): return _math().min(self, *args, **kwargs)
    def amax(self, *args, **kwargs): return _math().amax(self, *args, **kwargs)
    def var(self, *args, **kwargs): return _math().var(self, *args, **kwargs)
    def std(self, *args, **kwargs): return _math().std(self, *args, **kwargs)
    def amin(self, *args, **kwargs): return _math().amin(self, *args, **kwargs)
    def reshape(self, *shape): return _math().reshape(self, _shape_arg(shape))
    def view(self, *shape): return _math().reshape(self, _shape_arg(shape))
    def transpose(self, dim0, dim1): return _math().swapdims(self, dim0, dim1)   # torch's: swap two dims
    def permute(self, *axes): return _math().transpose(self, _shape_arg(axes))
    def flatten(self, start_dim=0, end_dim=-1): return _math().flatten(self, start_dim, end_dim)
    def abs(self): return _math().abs(self)
    def clamp(self, min=None, max=None): return _math().clamp(self, min, max)
    def unsqueeze(self, dim): return _math().unsqueeze(self, dim)
    def squeeze(self, dim=None): return _math().squeeze(self, dim)
    def exp(self): return _math().exp(self)
    def log(self): return _math().log(self)
    def sqrt(self): return _math().sqrt(self)
    def relu(self): return _math().relu(self)
    def sigmoid(self): return _math().sigmoid(self)
    def tanh(self): return _math().tanh(self)
    def softmax(self, *args, **kwargs): return _math().softmax(self, *args, **kwargs)
    def log_softmax(self, *args, **kwargs): return _math().log_softmax(self, *args, **kwargs)
    def argmax(self, dim=None, keepdim=False): return _math().argmax(self, dim, keepdim)


class _Size(int):
    """``t.size``: the element count, as NumPy's ``.size``, and callable as torch's ``size()``:
    ``t.size()`` is the shape, ``t.size(d)`` its length along d."""

    def __new__(cls, count, shape):
        size = super().__new__(cls, count)
        size.shape = tuple(shape)
        return size

    def __call__(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


def _math():
    from .ops import math
    return math


def _shape_arg(args):
    """Accept both t.reshape(2, 3) and t.reshape((2, 3))."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _accumulate(into, g):
    """A leaf's .grad += g. Safe in place: a leaf's .grad is always its own copy."""
    if into.shape == g.shape and into.dtype == g.dtype and getattr(into.flags, "writeable", True):
        into += g
        return into
    return into + g


def _topological_order(root):
    """Nodes reachable from ``root`` with every node after all of its inputs (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx not in (None, _FREED):
            for parent in node._ctx.parents:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def tensor(data, requires_grad=False, dtype=None, device=None):
    """Make a Tensor from a list, scalar, NumPy or CuPy array (like ``torch.tensor``).

    Python floats become float32 unless ``dtype`` says otherwise (PyTorch's default);
    arrays keep their dtype.
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is None and not (isinstance(data, numpy.ndarray) or backend.is_cupy(data)):
        data = numpy.asarray(data)
        if data.dtype == numpy.float64:
            data = data.astype(numpy.float32)
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
