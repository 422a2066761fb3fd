"""MNIST from the idx files in a local folder (cubn never downloads).

Expected in ``root``: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each possibly gzipped with a .gz suffix. The same reader takes
Fashion-MNIST, which uses the same names and format.

idx format: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions d, then d big-endian uint32 sizes, then the values row-major.
"""
import gzip
import pathlib
import zlib

import numpy

from .digits import pixels_as

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def load_mnist(root, split="train", dtype=numpy.float32):
    """``(images (N, 1, 28, 28), labels int64 (N,))`` for ``split`` 'train' or 'test'.

    Pixels are scaled to [0, 1] unless ``dtype=numpy.uint8`` (see ``cubn.data.digits``).
    Raises FileNotFoundError for a missing file and ValueError for a malformed one
    (wrong magic number, sizes that disagree with the header, labels outside 0..9).
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_file, label_file = (find_file(root, name) for name in FILES[split])
    images, labels = read_idx(image_file, ndim=3), read_idx(label_file, ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_file}: label {labels.max()} is outside 0..9")
    return pixels_as(images[:, None], 255, dtype), labels.astype(numpy.int64)


def find_file(root, name):
    """``root/name`` or ``root/name.gz``, whichever exists."""
    root = pathlib.Path(root).expanduser()
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"MNIST file {name} (or {name}.gz) not found in {root}")


def read_idx(path, ndim):
    """The unsigned-byte array of ``ndim`` dimensions stored in the idx file ``path``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    magic = bytes([0, 0, 0x08, ndim])
    if data[:4] != magic:
        raise ValueError(f"{path}: magic number 0x{data[:4].hex()} is not 0x{magic.hex()} "
                         f"(idx file of unsigned bytes with {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated inside the header ({len(data)} bytes)")
    shape = tuple(int(s) for s in numpy.frombuffer(data, ">u4", ndim, offset=4))
    expected = header + int(numpy.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: the header says shape {shape}, i.e. {expected} bytes, "
                         f"but the file has {len(data)}")
    return numpy.frombuffer(data, numpy.uint8, offset=header).reshape(shape)
