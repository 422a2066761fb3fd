"""Synthetic data sets made on the fly: no download, no extra dependency."""
import numpy


def spirals(n_per_class, classes=3, seed=0):
    """Interleaved 2-D spirals lifted to 16 features by a fixed random map: not linearly separable."""
    rng = numpy.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        t = numpy.linspace(0.2, 1.0, n_per_class)
        angle = 4.0 * t + 2 * numpy.pi * k / classes + rng.normal(0, 0.1, n_per_class)
        xs.append(numpy.stack([t * numpy.cos(angle), t * numpy.sin(angle)], 1))
        ys.append(numpy.full(n_per_class, k))
    x, y = numpy.concatenate(xs), numpy.concatenate(ys)
    lift = rng.normal(0, 1, (2, 16))
    return (numpy.tanh(x @ lift) * 3 + 5).astype(numpy.float32), y.astype(numpy.int64)


def synthetic_cifar(n, seed=0, num_classes=10):
    """CIFAR-shaped data with learnable classes: ``(images float32 (n, 3, 32, 32) in [0, 1], labels int64 (n,))``.

    Each class has a fixed pattern: per channel, a sum of three low-frequency 2-D cosines, scaled
    to unit standard deviation. A sample is ``0.5 + 0.15 * (contrast * pattern[label] + noise)``,
    clipped to [0, 1], with contrast uniform in [0.5, 1.5] and standard normal noise per pixel.
    The patterns do not depend on ``seed`` (only labels, contrast and noise do), so two seeds
    give a train and a test set of the same task. For benchmarks and tests; no download.
    """
    if n < 0 or num_classes < 1:
        raise ValueError(f"need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    patterns = _class_patterns(num_classes)
    rng = numpy.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    contrast = rng.uniform(0.5, 1.5, (n, 1, 1, 1)).astype(numpy.float32)
    images = contrast * patterns[labels] + rng.standard_normal((n, 3, 32, 32), dtype=numpy.float32)
    images = numpy.float32(0.5) + numpy.float32(0.15) * images
    return numpy.clip(images, 0, 1, out=images), labels.astype(numpy.int64)


def _class_patterns(num_classes, size=32, terms=3):
    rng = numpy.random.default_rng(20240601)  # fixed: the task is the same for every seed
    freq = rng.integers(0, 4, (num_classes, 3, terms, 2, 1, 1))
    phase = rng.uniform(0, 2 * numpy.pi, (num_classes, 3, terms, 1, 1))
    yy, xx = numpy.mgrid[0:size, 0:size] * (2 * numpy.pi / size)
    waves = numpy.cos(freq[:, :, :, 0] * yy + freq[:, :, :, 1] * xx + phase).sum(axis=2)
    waves /= waves.std(axis=(1, 2, 3), keepdims=True)
    return waves.astype(numpy.float32)
