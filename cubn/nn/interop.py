"""Move BatchNorm state between cubn and PyTorch, Keras 3 and Flax (linen), as plain NumPy arrays.

The three frameworks compute the same eval-mode output, gamma * (x - mean) / sqrt(var + eps) + beta,
but differ in names, defaults and in how training moves the running statistics:

* names: PyTorch weight, bias, running_mean, running_var; Keras gamma, beta, moving_mean,
  moving_variance; Flax params scale, bias and batch_stats mean, var.
* momentum: PyTorch's (cubn's) is the weight of the new batch, m = 0.1:
  running = (1 - m) * running + m * batch. Keras's and Flax's is a decay, the weight of the
  old value, 0.99 by default: moving = momentum * moving + (1 - momentum) * batch.
* running variance: PyTorch folds in the unbiased batch variance, Keras and Flax the biased one.
* eps: PyTorch 1e-5, Keras 1e-3 (``epsilon``), Flax 1e-5 (``epsilon``).
* channel axis: PyTorch 1; Keras and Flax ``axis``, -1 by default.

So importing from Keras or Flax sets cubn's ``momentum = 1 - their momentum`` and, where the
BatchNorm layers have it, ``running_var_estimator = "biased"``: eval outputs match at once, and
further training moves the statistics as the original framework would. cubn layers are
channels-first (NCHW); the per-channel arrays are the same whatever the layout, but inputs from
a channels-last model must be transposed.

Nothing is pickled; every value is a NumPy array (any array-like is accepted on the way in,
including CPU torch tensors, JAX and TensorFlow arrays). Imported layers have float32
parameters, like every new cubn layer; call ``.double()`` for float64, ``.to("cuda")`` for the GPU.
"""
import collections
import numbers

import numpy

from .. import backend
from ..tensor import Tensor
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .bn_tools import BATCHNORM_TYPES
from .checks import check_eps, check_fraction
from .module import Module

_LAYER_FOR_DIMS = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}


# ---- shared helpers -----------------------------------------------------------------------
def _as_numpy(value, what):
    """Any array-like (NumPy, cubn Tensor, CPU torch tensor, JAX/TF array) as a NumPy array."""
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (maybe requiring grad)
        value = value.detach().cpu()
    try:
        return numpy.asarray(value)
    except Exception as e:  # noqa: BLE001 - report any conversion failure the same way
        raise ValueError(f"{what} must be an array, got {type(value).__name__} ({e})") from None


def _vector(value, length, what):
    """A float64 (length,) array of finite values; ``length`` None accepts any length."""
    a = _as_numpy(value, what)
    if a.ndim != 1 or (length is not None and a.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        raise ValueError(f"{what} must have shape {want}, got {a.shape}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold numbers, got dtype {a.dtype}")
    a = a.astype(numpy.float64)
    if not numpy.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return a


def _check_layer(layer, who):
    if not isinstance(layer, BATCHNORM_TYPES):
        raise TypeError(f"{who} takes a BatchNorm1d/2d/3d layer, got {type(layer).__name__}")
    return layer


def _new_layer(dims, num_features, eps, momentum, scale, center):
    """A BatchNorm{dims}d with the given eps and (PyTorch-meaning) momentum.

    cubn has one ``affine`` switch for gamma and beta. When only one of them exists in the
    source, the other is kept at its neutral value (gamma 1 or beta 0) with
    ``requires_grad=False``, so training leaves it there (optimizers skip parameters without
    a gradient); the exporters read that back as "absent".
    """
    if dims not in _LAYER_FOR_DIMS:
        raise ValueError(f"dims must be 1, 2 or 3 (BatchNorm1d/2d/3d), got {dims!r}")
    layer = _LAYER_FOR_DIMS[dims](num_features, eps=eps, momentum=momentum, affine=scale or center,
                                  track_running_stats=True)
    if scale != center:
        (layer.bias if scale else layer.weight).requires_grad = False
    return layer


def _use_decay_convention(layer, decay):
    """Make the layer update like Keras/Flax: biased running variance, and ``decay`` where supported."""
    if hasattr(layer, "running_var_estimator"):
        layer.running_var_estimator = "biased"
    if hasattr(layer, "decay"):
        layer.decay = decay  # momentum (PyTorch meaning) already equals 1 - decay


def _fill(layer, gamma, beta, mean, var):
    """Copy float64 vectors (gamma/beta may be None) into the layer's parameters and buffers."""
    for tensor, values in ((layer.weight, gamma), (layer.bias, beta),
                           (layer.running_mean, mean), (layer.running_var, var)):
        if tensor is not None and values is not None:
            tensor.data[...] = backend.to_device(values, tensor.device).astype(tensor.dtype)


def _trained(p):
    """True when a parameter exists and is trained (not a frozen stand-in for an absent one)."""
    return p is not None and p.requires_grad


def _decay_of(layer, who):
    """The Keras/Flax momentum (decay) equivalent to the layer's update rule."""
    if layer.momentum is None:
        raise ValueError(f"{who}: the layer has momentum=None (a cumulative average), which Keras and Flax "
                         f"cannot express; set layer.momentum to a number first")
    decay = getattr(layer, "decay", None)
    return float(decay) if decay is not None else 1.0 - layer.momentum


def _check_axis(axis, who):
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(f"{who}: axis={axis!r} normalizes over several axes; cubn's BatchNorm has one "
                             f"channel axis")
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{who}: axis must be an int, got {axis!r}")
    return int(axis)


# ---- PyTorch ------------------------------------------------------------------------------
_TORCH_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _layers_of(layer_or_model, who):
    if not isinstance(layer_or_model, Module):
        raise TypeError(f"{who} takes a cubn.nn.Module, got {type(layer_or_model).__name__}")
    layers = [(name, m) for name, m in layer_or_model.named_modules() if isinstance(m, BATCHNORM_TYPES)]
    if not layers:
        raise ValueError(f"{who}: {type(layer_or_model).__name__} holds no BatchNorm layer")
    return layers


def _key(prefix, name, key):
    return f"{prefix}{name}.{key}" if name else f"{prefix}{key}"


TorchLoadResult = collections.namedtuple("TorchLoadResult", ["layers", "loaded", "skipped"])


def from_torch_state_dict(layer_or_model, state_dict, prefix="", *, bn_only=False):
    """Load a PyTorch state dict into ``layer_or_model`` in place; returns ``TorchLoadResult(layers,
    loaded, skipped)``: the BatchNorm layers loaded, the keys copied, and the keys of ``state_dict``
    that matched nothing (say, a head the cubn model lacks), so nothing is skipped silently.

    ``state_dict`` maps names to arrays (NumPy arrays, or CPU torch tensors: anything
    ``numpy.asarray`` takes) as ``torch_module.state_dict()`` names them, under ``prefix``
    (e.g. "module." for a DataParallel model). Every parameter and buffer of the cubn model
    whose name is there is copied (convolutions, linears and norms alike); with
    ``bn_only=True`` only the BatchNorm layers' entries are. cubn's BatchNorm conventions are
    PyTorch's (same momentum meaning, unbiased running variance), so values are copied as they
    are. For each BatchNorm layer at dotted path ``p``: ``p.weight``, ``p.bias``,
    ``p.running_mean`` and ``p.running_var`` must be there (``p.num_batches_tracked`` may be
    missing: PyTorch before 0.4.1 did not save it); a ``weight``/``bias`` for a layer with
    ``affine=False``, NaN or infinite statistics, and any shape that does not match are
    ValueErrors, all raised before anything changes.
    """
    who = "from_torch_state_dict"
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"{who}: state_dict must be a dict of name -> array, got {type(state_dict).__name__}")
    if not isinstance(layer_or_model, Module):
        raise TypeError(f"{who} takes a cubn.nn.Module, got {type(layer_or_model).__name__}")
    layers = [(name, m) for name, m in layer_or_model.named_modules() if isinstance(m, BATCHNORM_TYPES)]
    if bn_only and not layers:
        raise ValueError(f"{who}: {type(layer_or_model).__name__} holds no BatchNorm layer")
    updates, problems, used = [], [], set()
    for name, layer in layers:
        for key in _TORCH_KEYS:
            target = getattr(layer, key)
            full = _key(prefix, name, key)
            if target is None:
                if full in state_dict and key in ("weight", "bias"):
                    problems.append(f"{full} given but the layer has affine=False")
                continue
            if full not in state_dict:
                if key != "num_batches_tracked":
                    problems.append(f"missing key {full}")
                continue
            value = _as_numpy(state_dict[full], full)
            if key != "num_batches_tracked" and not numpy.isfinite(value.astype(numpy.float64)).all():
                problems.append(f"{full} holds NaN or infinite values")
            updates.append((full, target, value))
            used.add(full)
    if not bn_only:
        bn_names = {name for name, _ in layers}
        for owner, module in layer_or_model.named_modules():
            if owner in bn_names:
                continue
            for table in (module._parameters, module._buffers):
                for key, target in table.items():
                    full = _key(prefix, owner, key)
                    if target is not None and full in state_dict:
                        updates.append((full, target, _as_numpy(state_dict[full], full)))
                        used.add(full)
    problems += [f"{full} has shape {value.shape}, expected {target.shape}"
                 for full, target, value in updates if value.shape != target.shape]
    if problems:
        raise ValueError(f"{who}: " + "; ".join(problems))
    for _, target, value in updates:
        target.data[...] = backend.to_device(value, target.device).astype(target.dtype)
    return TorchLoadResult([name for name, _ in layers], [full for full, _, _ in updates],
                           [k for k in state_dict.keys() if k not in used])


def to_torch_state_dict(layer_or_model, prefix=""):
    """The BatchNorm entries of a PyTorch state dict for ``layer_or_model``: name -> NumPy array copy.

    Names as ``from_torch_state_dict`` reads them; ``torch_module.load_state_dict({k:
    torch.from_numpy(v) ...}, strict=False)`` takes them. Only BatchNorm layers are included.
    A layer with a biased running variance (imported from Keras/Flax) exports it as it is:
    eval outputs agree, PyTorch's later updates will use the unbiased estimator.
    """
    state = collections.OrderedDict()
    for name, layer in _layers_of(layer_or_model, "to_torch_state_dict"):
        for key in _TORCH_KEYS:
            value = getattr(layer, key)
            if value is not None:
                state[_key(prefix, name, key)] = value.numpy().copy()
    return state


# ---- Keras 3 ------------------------------------------------------------------------------
_KERAS_DEFAULTS = {"axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True}


def batchnorm_from_keras(weights, config, dims=2):
    """A new cubn BatchNorm{dims}d equivalent to a Keras 3 ``BatchNormalization`` layer.

    ``weights``: ``keras_layer.get_weights()``, i.e. [gamma, beta, moving_mean, moving_variance]
    with gamma absent when ``scale=False`` and beta absent when ``center=False``.
    ``config``: ``keras_layer.get_config()`` or any dict with the keys that matter:
    ``epsilon`` (default 1e-3), ``momentum`` (default 0.99; Keras's momentum is a decay,
    the weight of the old value), ``axis`` (default -1; one axis), ``center``, ``scale``
    (default True), ``trainable`` (default True; False, Keras's frozen BatchNormalization,
    gives a layer with frozen statistics and gamma/beta that do not train); other keys are
    ignored. Keras 2 options cubn cannot reproduce (``renorm``, ``virtual_batch_size``) are
    ValueErrors. ``dims``: 1 for BatchNorm1d (Dense/Conv1D features), 2 for BatchNorm2d
    (images); the Keras weights do not say which.

    The layer gets ``eps = epsilon``, ``momentum = 1 - keras momentum`` (PyTorch meaning) and,
    where BatchNorm has it, ``running_var_estimator = "biased"``: eval outputs equal Keras's,
    and training steps move the statistics as Keras does
    (moving = moving * momentum + batch * (1 - momentum), biased batch variance).
    """
    who = "batchnorm_from_keras"
    if not isinstance(config, dict):
        raise TypeError(f"{who}: config must be a dict (keras_layer.get_config()), got {type(config).__name__}")
    cfg = {**_KERAS_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if cfg.get("renorm"):
        raise ValueError(f"{who}: renorm=True (Keras 2 Batch Renormalization) is not supported")
    if cfg.get("virtual_batch_size"):
        raise ValueError(f"{who}: virtual_batch_size (Keras 2 ghost batches) is not supported; "
                         f"see cubn.nn.GhostBatchNorm2d")
    _check_axis(cfg["axis"], who)
    eps = check_eps(cfg["epsilon"], "epsilon")
    decay = check_fraction(cfg["momentum"], "momentum")
    scale, center = bool(cfg["scale"]), bool(cfg["center"])
    names = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    weights = list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{who}: with scale={scale}, center={center} weights must be [{', '.join(names)}] "
                         f"({len(names)} arrays), got {len(weights)}")
    first = _vector(weights[0], None, names[0])
    values = dict(zip(names, (_vector(w, first.shape[0], n) for n, w in zip(names, weights))))
    if (values["moving_variance"] < 0).any():
        raise ValueError(f"{who}: moving_variance must be >= 0")
    layer = _new_layer(dims, first.shape[0], eps, 1.0 - decay, scale, center)
    _use_decay_convention(layer, decay)
    _fill(layer, values.get("gamma"), values.get("beta"), values["moving_mean"], values["moving_variance"])
    if cfg.get("trainable", True) is False:   # Keras: inference-mode statistics and frozen weights
        layer.freeze_stats()
        for p in layer.parameters():
            p.requires_grad = False
    return layer


def batchnorm_to_keras(layer, axis=-1):
    """(weights, config) for a Keras 3 ``BatchNormalization``: ``keras_layer.set_weights(weights)`` after
    building it with ``BatchNormalization(**config)``.

    weights: [gamma, beta, moving_mean, moving_variance] as float32 NumPy arrays, gamma (beta)
    left out when the layer has no trained weight (bias). config: ``axis`` (the argument,
    -1 for a channels-last Keras model; cubn itself is channels-first), ``momentum`` = 1 - cubn
    momentum, ``epsilon``, ``center``, ``scale``. A layer with ``momentum=None`` or without
    running statistics is a ValueError. Keras will update the moving variance with the biased
    estimator from then on.
    """
    who = "batchnorm_to_keras"
    _check_layer(layer, who)
    if not layer.track_running_stats:
        raise ValueError(f"{who}: the layer has track_running_stats=False, so no moving statistics to export")
    axis = _check_axis(axis, who)
    scale, center = _trained(layer.weight), _trained(layer.bias)
    arrays = [layer.weight] * scale + [layer.bias] * center + [layer.running_mean, layer.running_var]
    weights = [t.numpy().astype(numpy.float32) for t in arrays]
    config = {"axis": axis, "momentum": _decay_of(layer, who), "epsilon": layer.eps, "center": center, "scale": scale}
    return weights, config


# ---- Flax linen ---------------------------------------------------------------------------
def batchnorm_from_flax(params, batch_stats, momentum=None, epsilon=None, dims=2):
    """A new cubn BatchNorm{dims}d equivalent to a Flax linen ``nn.BatchNorm``.

    ``params``: the layer's entry of ``variables["params"]``, ``{"scale": (C,), "bias": (C,)}``
    (either absent when the layer had ``use_scale``/``use_bias`` False);
    ``batch_stats``: its entry of ``variables["batch_stats"]``, ``{"mean": (C,), "var": (C,)}``.
    ``momentum`` and ``epsilon`` are the Flax module's arguments, which its variables do not
    hold: they must be given (Flax's defaults are 0.99 and 1e-5; its momentum is a decay).
    ``dims``: 1 for BatchNorm1d, 2 for BatchNorm2d. As for Keras, the layer gets ``momentum = 1 - flax momentum``
    and, where supported, ``running_var_estimator = "biased"`` (Flax updates
    ra = momentum * ra + (1 - momentum) * batch with the biased variance).
    """
    who = "batchnorm_from_flax"
    unset = [name for name, v in (("momentum", momentum), ("epsilon", epsilon)) if v is None]
    if unset:
        raise ValueError(f"{who}: {' and '.join(unset)} must be given: they are arguments of the Flax "
                         f"nn.BatchNorm, not part of its variables (Flax's defaults: momentum=0.99, epsilon=1e-5)")
    for name, d, allowed in (("params", params, {"scale", "bias"}), ("batch_stats", batch_stats, {"mean", "var"})):
        if not hasattr(d, "keys"):
            raise TypeError(f"{who}: {name} must be a dict, got {type(d).__name__}")
        extra = set(d.keys()) - allowed
        if extra:
            raise ValueError(f"{who}: {name} has unexpected keys {sorted(extra)} (expected {sorted(allowed)}); "
                             f"pass the BatchNorm layer's own entry, e.g. variables['params']['BatchNorm_0']")
    missing = [k for k in ("mean", "var") if k not in batch_stats]
    if missing:
        raise ValueError(f"{who}: batch_stats is missing {missing}")
    mean = _vector(batch_stats["mean"], None, "batch_stats['mean']")
    C = mean.shape[0]
    var = _vector(batch_stats["var"], C, "batch_stats['var']")
    if (var < 0).any():
        raise ValueError(f"{who}: batch_stats['var'] must be >= 0")
    scale = _vector(params["scale"], C, "params['scale']") if "scale" in params else None
    bias = _vector(params["bias"], C, "params['bias']") if "bias" in params else None
    eps = check_eps(epsilon, "epsilon")
    decay = check_fraction(momentum, "momentum")
    layer = _new_layer(dims, C, eps, 1.0 - decay, scale is not None, bias is not None)
    _use_decay_convention(layer, decay)
    _fill(layer, scale, bias, mean, var)
    return layer


def batchnorm_to_flax(layer, axis=-1):
    """(params, batch_stats, config) for a Flax linen ``nn.BatchNorm(**config)``.

    params ``{"scale", "bias"}`` (each left out when the layer has no trained weight/bias),
    batch_stats ``{"mean", "var"}``, float32 NumPy arrays; config ``momentum`` (= 1 - cubn
    momentum), ``epsilon``, ``use_scale``, ``use_bias``, ``axis`` (-1 for channels-last).
    """
    who = "batchnorm_to_flax"
    _check_layer(layer, who)
    if not layer.track_running_stats:
        raise ValueError(f"{who}: the layer has track_running_stats=False, so no batch_stats to export")
    axis = _check_axis(axis, who)
    params = {}
    if _trained(layer.weight):
        params["scale"] = layer.weight.numpy().astype(numpy.float32)
    if _trained(layer.bias):
        params["bias"] = layer.bias.numpy().astype(numpy.float32)
    batch_stats = {"mean": layer.running_mean.numpy().astype(numpy.float32),
                   "var": layer.running_var.numpy().astype(numpy.float32)}
    config = {"momentum": _decay_of(layer, who), "epsilon": layer.eps, "use_scale": "scale" in params,
                  "use_bias": "bias" in params, "axis": axis}
    return params, batch_stats, config


__all__ = [
    "batchnorm_from_flax",
    "batchnorm_from_keras",
    "batchnorm_to_flax",
    "batchnorm_to_keras",
    "from_torch_state_dict",
    "to_torch_state_dict",
]
