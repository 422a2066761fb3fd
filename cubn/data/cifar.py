"""CIFAR-10 from the BINARY distribution in a local folder (cubn never downloads).

Expected in ``root`` or in ``root/cifar-10-batches-bin``: data_batch_1.bin ... data_batch_5.bin
(train) and test_batch.bin (test), as unpacked from cifar-10-binary.tar.gz. Each record is
1 label byte then 3072 pixel bytes: 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
The pickled "python version" is refused: loading a pickle can run arbitrary code.
"""
import pathlib

import numpy

from .digits import pixels_as

FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORD = 1 + 3 * 32 * 32


def load_cifar10(root, split="train", dtype=numpy.float32):
    """``(images (N, 3, 32, 32), labels int64 (N,))`` for ``split`` 'train' or 'test'.

    Pixels are scaled to [0, 1] unless ``dtype=numpy.uint8`` (see ``cubn.data.digits``).
    Raises FileNotFoundError for missing files (also when only the pickled version is there)
    and ValueError for a file that is not a whole number of records or has labels outside 0..9.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_folder(pathlib.Path(root).expanduser(), FILES[split][0])
    records = numpy.concatenate([read_batch(folder / name) for name in FILES[split]])
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return pixels_as(images, 255, dtype), records[:, 0].astype(numpy.int64)


def find_folder(root, first):
    """``root`` or ``root/cifar-10-batches-bin``, whichever holds the file ``first``."""
    for folder in (root, root / "cifar-10-batches-bin"):
        if (folder / first).is_file():
            return folder
    pickled = first.removesuffix(".bin")
    for path in (root / pickled, root / "cifar-10-batches-py" / pickled):
        if path.exists():
            raise FileNotFoundError(
                f"found {path}, the pickled Python version of CIFAR-10; cubn reads only the binary "
                f"version (cifar-10-binary.tar.gz, files {first} ...), since loading pickles can run code")
    raise FileNotFoundError(f"CIFAR-10 binary file {first} not found in {root} or {root / 'cifar-10-batches-bin'}")


def read_batch(path):
    """The records of one batch file as a uint8 array (n, 3073): label byte, then the pixels."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 binary file {path} is missing")
    data = path.read_bytes()
    if len(data) == 0 or len(data) % RECORD:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole, non-zero number of {RECORD}-byte "
                         "records (1 label byte + 3072 pixel bytes): truncated, or not CIFAR-10 binary")
    records = numpy.frombuffer(data, numpy.uint8).reshape(-1, RECORD)
    if records[:, 0].max() > 9:
        raise ValueError(f"{path}: label {records[:, 0].max()} is outside 0..9 (CIFAR-100 binary has 2 label bytes)")
    return records
