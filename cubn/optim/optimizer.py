"""The Optimizer base: PyTorch's parameter groups, per-parameter state and state dicts.

An optimizer holds ``param_groups``, a list of dicts ``{"params": [Parameter, ...], "lr": ..., ...}``
(each group's hyper-parameters default to the constructor's), and ``state``, a dict from
Parameter to that parameter's state (momentum buffers, Adam moments, a step count).
``step()`` walks every parameter that has a gradient and calls the subclass's ``_update`` on
raw arrays, in place and under ``no_grad``; the state arrays live on the parameter's device.

``state_dict()`` holds only plain numbers, lists of numbers and arrays (no pickle-only objects),
so it can be written with ``numpy.savez(..., allow_pickle=False)`` once flattened::

    {"param_groups": [{"lr": 0.1, "momentum": 0.9, ..., "params": [0, 1]},   # indices, not tensors
                      {"lr": 0.01, ..., "params": [2]}],
     "state": {0: {"momentum_buffer": array},                                 # index -> that param's state
               2: {"step": 3, "exp_avg": array, "exp_avg_sq": array}}}

Indices count the parameters across groups in order, as in PyTorch. Parameters that never had
a gradient have no entry in ``state``.
"""
import math
import numbers

from .. import backend
from ..tensor import Tensor, no_grad


class Optimizer:
    """Base class. Subclasses call ``super().__init__(params, defaults)`` and define

    ``state_keys``            the names of the array entries of a parameter's state (plus "step", an int)
    ``_check_group(group)``   validate and normalize a group's hyper-parameters other than lr, in place
    ``_update(param, grad, state, group)``  update the array ``param`` in place

    ``params`` is an iterable of Tensors, or of dicts ``{"params": [...], **overrides}``. Every
    optimizer has an ``lr``: it must be > 0 when given, but a schedule may bring it down to 0
    (cosine annealing to eta_min=0), so a loaded state dict may hold 0.
    """

    state_keys = ()

    def __init__(self, params, defaults):
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__} takes an iterable of Tensors or of dicts, got a Tensor; "
                            "wrap it in a list")
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Append a group ``{"params": ..., **overrides}``; missing hyper-parameters take the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a parameter group must be a dict with a 'params' entry, got {group!r}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Tensor) or p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__} can only optimize floating-point Tensors, got {p!r}")
            if id(p) in seen:
                raise ValueError("a parameter appears more than once among the parameter groups")
            seen.add(id(p))
        group = {**self.defaults, **group, "params": params}
        check_number(group["lr"], "lr", lambda v: v > 0, "a positive number")
        self.param_groups.append(self._checked(group))

    def _checked(self, group):
        group["lr"] = check_non_negative(group["lr"], "lr")
        self._check_group(group)
        return group

    def _check_group(self, group):
        raise NotImplementedError

    def _update(self, param, grad, state, group):
        raise NotImplementedError

    def zero_grad(self):
        """Forget every gradient (sets ``.grad = None``, PyTorch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional) recomputes the loss."""
        loss = None
        if closure is not None:
            loss = closure()
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p.data, p.grad, self.state.setdefault(p, {}), group)
        return loss

    # ---- saving and resuming ---------------------------------------------
    def state_dict(self):
        """Copies of the groups' hyper-parameters and the per-parameter state; layout in the module docstring."""
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            indices = list(range(index, index + len(group["params"])))
            for i, p in zip(indices, group["params"]):
                if self.state.get(p):
                    state[i] = {k: v.copy() if hasattr(v, "copy") else v for k, v in self.state[p].items()}
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": indices})
            index += len(indices)
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by ``state_dict`` (or read back from ``numpy.savez``).

        The parameters stay this optimizer's own; they are matched by position, so groups and
        parameters must be in the same order. Group count, parameter counts, state keys and array
        shapes are checked before anything changes (ValueError). Arrays may be NumPy or CuPy; they
        are copied onto each parameter's device and cast to its dtype. State keys may be ints or
        strings ("3"); numbers may be 0-d arrays.
        """
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"param_groups", "state"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}: expected a dict with keys 'param_groups' and 'state', got {got}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        params, groups = [], []
        for i, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            n_saved = len(_plain(saved.get("params", [])))
            if n_saved != len(own["params"]):
                raise ValueError(f"{name}: parameter group {i} has {n_saved} parameters in the state dict, "
                                 f"{len(own['params'])} in this optimizer")
            missing = sorted(set(self.defaults) - set(saved))
            if missing:
                raise ValueError(f"{name}: parameter group {i} of the state dict lacks {missing} "
                                 f"(saved by another kind of optimizer?)")
            group = {k: _plain(v) for k, v in saved.items() if k != "params"}
            group["params"] = own["params"]
            groups.append(self._checked(group))
            params += own["params"]
        state = {}
        for key, entry in state_dict["state"].items():
            index = int(_plain(key))
            if not 0 <= index < len(params):
                raise ValueError(f"{name}: the state dict has state for parameter {index}, "
                                 f"this optimizer has {len(params)} parameters")
            p = params[index]
            unknown = set(entry) - {"step", *self.state_keys}
            if unknown:
                raise ValueError(f"{name}: unknown state {sorted(unknown)} for parameter {index}; "
                                 f"{type(self).__name__} keeps {['step', *self.state_keys]}")
            for k, v in entry.items():
                if k != "step" and tuple(v.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: {k} of parameter {index} has shape {tuple(v.shape)}, "
                                     f"the parameter has shape {tuple(p.shape)}")
            state[p] = {k: int(_plain(v)) if k == "step" else backend.to_device(v, p.device).astype(p.dtype)
                        for k, v in entry.items()}
        self.param_groups = groups
        self.state = state


def _plain(value):
    """A 0-d or 1-d array (as read back from numpy.savez) -> a Python number or list; anything else as is."""
    return value.tolist() if hasattr(value, "tolist") else value


def check_number(value, name, ok, expected):
    """``value`` as a float if it is a finite real number with ``ok(value)``, else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def check_non_negative(value, name):
    return check_number(value, name, lambda v: v >= 0, "a number >= 0")


def weight_decay_groups(model, weight_decay):
    """Two parameter groups for ``model``: ``[{"params": decayed, "weight_decay": weight_decay},
    {"params": exempt, "weight_decay": 0.0}]``.

    Exempt (no weight decay): every parameter of a normalization layer (BatchNorm1d/2d/3d,
    BatchRenorm1d/2d, LayerNorm, GroupNorm, InstanceNorm1d/2d/3d, RMSNorm -- their scale and shift
    set the normalized output's statistics; decaying the scale toward 0 fights the normalization)
    and every parameter named ``bias``. Everything else (conv and linear weights) is decayed.
    A parameter shared by several modules appears once, exempt if any of its uses is. Either group
    may be empty. Use as ``AdamW(weight_decay_groups(model, 0.05), lr=1e-3)``.
    """
    from .. import nn  # here, not at the top, so importing cubn.optim never depends on cubn.nn's import order
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.BatchRenorm1d, nn.BatchRenorm2d, nn.LayerNorm,
             nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.RMSNorm)
    weight_decay = check_non_negative(weight_decay, "weight_decay")
    exempt, everything = {}, {}
    for _, module in model.named_modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            everything.setdefault(id(p), p)
            if isinstance(module, norms) or name == "bias":
                exempt[id(p)] = p
    decayed = [p for key, p in everything.items() if key not in exempt]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": list(exempt.values()), "weight_decay": 0.0}]
