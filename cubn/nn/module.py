"""Module, Parameter, Sequential, ModuleList and ModuleDict: the containers of the layer API.

A Module owns Parameters (trained tensors), buffers (state such as running
statistics, saved in the state dict but not trained) and child Modules.
Assigning one as an attribute registers it, as in PyTorch.
"""
import collections

import numpy

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad defaults to True."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer; subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # ---- registration ----------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def register_buffer(self, name, value, optional=False):
        """Keep ``value`` (a Tensor or None) as state: in the state dict, moved by ``to``, never trained.

        ``optional``: a state dict without this buffer still loads strictly (the buffer keeps its
        value). For counters cubn adds to PyTorch's layers, so PyTorch-shaped state dicts load.
        """
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        if optional:
            self.__dict__.setdefault("_optional_buffers", set()).add(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = None if value is None else (value if isinstance(value, Tensor) else Tensor(value))

    def register_parameter(self, name, value):
        """Register ``value`` (a Parameter or None) under ``name``."""
        if value is not None and not isinstance(value, Parameter):
            raise TypeError(f"parameter {name!r} must be a Parameter or None, got {type(value).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = value

    # ---- calling -----------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal -------------------------------------------------------
    def named_modules(self, prefix=""):
        """(name, module) for self and every descendant, depth first; names are dotted paths."""
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def _named(self, table):
        for path, module in self.named_modules():
            for name, value in getattr(module, table).items():
                if value is not None:
                    yield (f"{path}.{name}" if path else name), value

    def named_parameters(self):
        return self._named("_parameters")

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        return self._named("_buffers")

    def buffers(self):
        return (b for _, b in self.named_buffers())

    # ---- modes and state -------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics in norms) for self and all children; returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """An ordered dict of dotted name -> array copy, parameters then buffers of each module."""
        state = collections.OrderedDict()
        for path, module in self.named_modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is not None:
                        state[f"{path}.{name}" if path else name] = value.data.copy()
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into this module's parameters and buffers, in place.

        With ``strict`` (the default) missing and unexpected keys are errors (a buffer
        registered as optional may be missing);
        a shape mismatch always is. Values may be NumPy or CuPy arrays (or
        Tensors) and are moved to each tensor's device and cast to its dtype.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        own, optional = {}, set()
        for path, module in self.named_modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is not None:
                        own[f"{path}.{name}" if path else name] = value
            optional.update(f"{path}.{name}" if path else name for name in module.__dict__.get("_optional_buffers", ()))
        missing = [k for k in own if k not in state_dict and k not in optional]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        values = {}
        for key, target in own.items():  # check every entry before changing anything
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.data if isinstance(value, Tensor) else value
            if not hasattr(value, "shape"):
                value = numpy.asarray(value)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {key} has shape {tuple(value.shape)} in the state dict, "
                                 f"expected {tuple(target.shape)}")
            values[key] = value
        for key, value in values.items():
            target = own[key]
            target.data[...] = backend.to_device(value, target.device).astype(target.dtype, copy=False)
        return LoadResult(missing, unexpected)

    def to(self, device=None, dtype=None):
        """Move (and/or cast floating-point) parameters and buffers in place; returns self.
        ``to("cuda")``, ``to(numpy.float64)`` (a dtype in the first place, as torch allows) or both."""
        if device is not None and not isinstance(device, str):
            if dtype is not None:
                raise TypeError(f"to() got two dtypes: {device!r} and {dtype!r}")
            device, dtype = None, device
        for module in self.modules():
            for table in (module._parameters, module._buffers):
                for t in table.values():
                    if t is None:
                        continue
                    t.data = _moved(t.data, device, dtype)
                    if t.grad is not None:
                        t.grad = _moved(t.grad, device, dtype)
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def double(self):
        return self.to(dtype=numpy.float64)

    def float(self):
        return self.to(dtype=numpy.float32)

    def half(self):
        return self.to(dtype=numpy.float16)

    def add_module(self, name, module):
        """Register ``module`` (a Module or None) under ``name``, as ``setattr`` does."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"add_module: name must be a non-empty string without '.', got {name!r}")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name} must be a Module or None, got {type(module).__name__}")
        self._modules[name] = module

    def apply(self, fn):
        """Call ``fn(module)`` on every submodule, children first, then on self (torch's order); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---- repr ------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _moved(array, device, dtype):
    """``array`` on ``device``, cast to ``dtype`` if it is floating point (integer buffers keep theirs)."""
    array = backend.to_device(array, device)
    return array.astype(dtype) if dtype is not None and array.dtype.kind == "f" else array


class Sequential(Module):
    """Calls its children in order. ``Sequential(a, b, c)`` or, the Keras habit, ``Sequential([a, b, c])``."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Modules, got {type(layer).__name__} at position {i}")
            self._modules[str(i)] = layer

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


class ModuleList(Module):
    """A list of Modules whose parameters belong to the owner, as ``torch.nn.ModuleList`` (no forward)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of Modules (insertion order) whose parameters belong to the owner, as ``torch.nn.ModuleDict``."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in dict(modules or {}).items():
            self[name] = m

    def __setitem__(self, name, module):
        self.add_module(name, module)

    def __getitem__(self, name):
        return self._modules[name]

    def __contains__(self, name):
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()
