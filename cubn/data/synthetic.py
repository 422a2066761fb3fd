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
