"""The one file that imports CuPy.

Everything else asks this module which array module an array belongs to
(``get_array_module``), whether a GPU answers (``has_gpu``) and how to move an
array between host and device (``to_device``). ``import cubn`` works with NumPy
alone: a missing or broken CuPy only makes ``has_gpu()`` return False.
"""
import numpy

try:
    import cupy
except Exception:  # ImportError, or a CuPy that finds no CUDA libraries at import
    cupy = None

_gpu_answers = None


def has_gpu():
    """True when CuPy imported AND a CUDA device answers (checked once, then cached)."""
    global _gpu_answers
    if _gpu_answers is None:
        _gpu_answers = False
        if cupy is not None:
            try:
                _gpu_answers = cupy.cuda.runtime.getDeviceCount() > 0
            except Exception:
                _gpu_answers = False
    return _gpu_answers


def is_cupy(x):
    return cupy is not None and isinstance(x, cupy.ndarray)


def get_array_module(x):
    """numpy or cupy, whichever owns ``x`` (numpy for anything that is not a CuPy array)."""
    return cupy if is_cupy(x) else numpy


def device_of(x):
    return "cuda" if is_cupy(x) else "cpu"


def check_device(device):
    """Normalize a device name; raises ValueError for anything but 'cpu' or 'cuda' (also 'cuda:0')."""
    if device is None:
        return None
    name = str(device)
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name == "cuda:0" or name == "gpu":
        if not has_gpu():
            raise RuntimeError("device='cuda' was asked for, but no CUDA device answers "
                               "(install cubn[cuda12] or cubn[cuda13] on a machine with a GPU)")
        return "cuda"
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def to_device(x, device):
    """Return ``x`` as an array on ``device`` ('cpu' or 'cuda'); no copy when it is already there."""
    device = check_device(device)
    if device is None or device == device_of(x):
        return x
    if device == "cpu":
        return cupy.asnumpy(x)
    return cupy.asarray(x)


def to_numpy(x):
    return cupy.asnumpy(x) if is_cupy(x) else numpy.asarray(x)
