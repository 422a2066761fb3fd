"""Save and load nested state (state dicts, checkpoints) without pickle.

A state is a tree of dicts (string or int keys), lists, tuples, numbers, strings, booleans, None
and arrays (NumPy, CuPy, or Tensors). ``save`` writes one ``.npz`` file: every array becomes an
entry ``a0``, ``a1``, ...; the tree itself, with each array replaced by ``{"__array__": "a0"}``,
is stored as JSON text in the entry ``__tree__``. ``load`` reads it back with
``allow_pickle=False``, so a file cannot run code when it is opened. Integer dict keys (the
optimizer's per-parameter state) are restored as ints; tuples come back as lists.

``save`` is atomic: it writes a temporary file beside the target and renames it over the target,
so a crash mid-write leaves the previous file intact.
"""
import json
import os
import zipfile

import numpy

from . import backend
from .tensor import Tensor

_ARRAY, _INT_KEYS = "__array__", "__int_keys__"


def _flatten(value, arrays, where):
    """The JSON-able tree of ``value``, appending its arrays (as NumPy) to ``arrays``."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, numpy.generic):
        value = value.item()
    if isinstance(value, numpy.ndarray) or backend.is_cupy(value):
        arrays.append(backend.to_numpy(value))
        return {_ARRAY: f"a{len(arrays) - 1}"}
    if isinstance(value, dict):
        int_keys = [k for k in value if isinstance(k, (int, numpy.integer)) and not isinstance(k, bool)]
        if len(int_keys) not in (0, len(value)) or not all(isinstance(k, str) for k in value if k not in int_keys):
            raise TypeError(f"{where}: dict keys must be all strings or all ints, got {list(value)!r}")
        if _ARRAY in value or _INT_KEYS in value:
            raise TypeError(f"{where}: the keys {_ARRAY!r} and {_INT_KEYS!r} are reserved")
        tree = {str(k): _flatten(v, arrays, f"{where}[{k!r}]") for k, v in value.items()}
        return {_INT_KEYS: tree} if int_keys else tree
    if isinstance(value, (list, tuple)):
        return [_flatten(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where}: cannot save a {type(value).__name__} without pickle "
                    "(allowed: dict, list, tuple, number, str, bool, None, arrays)")


def _unflatten(tree, arrays):
    if isinstance(tree, list):
        return [_unflatten(v, arrays) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            return arrays[tree[_ARRAY]]
        if set(tree) == {_INT_KEYS}:
            return {int(k): _unflatten(v, arrays) for k, v in tree[_INT_KEYS].items()}
        return {k: _unflatten(v, arrays) for k, v in tree.items()}
    return tree


def save(state, path):
    """Write ``state`` (see the module docstring) to ``path`` (a .npz file), atomically."""
    arrays = []
    tree = _flatten(state, arrays, "state")
    entries = {f"a{i}": a for i, a in enumerate(arrays)}
    entries["__tree__"] = numpy.array(json.dumps(tree))
    path = os.path.expanduser(os.fspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            numpy.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path):
    """Read a state written by ``save``; arrays come back as NumPy arrays. Never unpickles."""
    path = os.path.expanduser(os.fspath(path))
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise ValueError(f"{path} is not a cubn save file (not an .npz archive)")
    try:
        with numpy.load(os.fspath(path), allow_pickle=False) as stored:
            if "__tree__" not in stored.files:
                raise ValueError(f"{path} is not a file written by cubn.save (it has no '__tree__' entry)")
            arrays = {name: stored[name] for name in stored.files if name != "__tree__"}
            tree = json.loads(str(stored["__tree__"]))
    except (zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable cubn save file: {e}") from e
    return _unflatten(tree, arrays)
