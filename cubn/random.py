"""The global random generator used for parameter initialization (and, later, data shuffling).

``cubn.manual_seed(seed)`` makes initialization repeatable, like ``torch.manual_seed``.
"""
import numpy

_rng = numpy.random.default_rng()


def manual_seed(seed):
    """Reseed the global generator; returns it."""
    global _rng
    _rng = numpy.random.default_rng(seed)
    return _rng


def get_rng():
    return _rng
