"""The 8x8 handwritten digits shipped inside cubn (UCI optdigits, CC BY 4.0; see DIGITS_LICENSE.txt).

Image convention shared by every loader in ``cubn.data``: images come back as (N, C, H, W) and
labels as int64 (N,). With a floating ``dtype`` (the default, float32) the pixels are scaled to
[0, 1] by the format's largest value (16 here, 255 for MNIST and CIFAR); ``dtype=numpy.uint8``
returns the stored values unscaled.
"""
from importlib import resources

import numpy

SPLITS = ("train", "test", "all")


def pixels_as(images, max_value, dtype):
    """uint8 ``images`` as ``dtype``: uint8 keeps the stored values, a float dtype scales to [0, 1]."""
    dtype = numpy.dtype(dtype)
    if dtype == numpy.uint8:
        return images.astype(numpy.uint8)  # a writable copy, also of read-only buffers
    if dtype.kind != "f":
        raise TypeError(f"dtype must be uint8 or a floating-point dtype, got {dtype}")
    return images.astype(dtype) / dtype.type(max_value)


def load_digits(split="train", dtype=numpy.float32):
    """The 1797 8x8 digits: ``(images (N, 1, 8, 8), labels int64 (N,))``.

    ``split``: 'train' (1437 samples), 'test' (360) or 'all' (1797, in the source's order). The
    split is fixed, stratified by class, and stored with the data (scripts/make_digits.py).
    Pixels are counts 0..16, scaled to [0, 1] unless ``dtype=numpy.uint8``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, \
            numpy.load(f, allow_pickle=False) as stored:
        images, labels = stored["images"], stored["labels"]
        if split != "all":
            images, labels = images[stored[split]], labels[stored[split]]
    return pixels_as(images[:, None], 16, dtype), labels.astype(numpy.int64)
