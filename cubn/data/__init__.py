"""Data sets and loading.

Loaders return ``(images (N, C, H, W), labels int64 (N,))``; images are scaled to [0, 1] in the
requested float dtype (float32 by default), or the stored values with ``dtype=numpy.uint8``.
Nothing is ever downloaded: the digits ship inside cubn, MNIST and CIFAR-10 are read from a local folder.
"""
from .cifar import load_cifar10
from .digits import load_digits
from .loader import Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip
from .mnist import load_mnist
from .sampler import DistributedSampler
from .synthetic import spirals, synthetic_cifar

__all__ = ["load_digits", "load_mnist", "load_cifar10", "spirals", "synthetic_cifar",
           "DataLoader", "Compose", "RandomCrop", "RandomHorizontalFlip", "Normalize",
           "DistributedSampler"]
