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


def get_state():
    """The global generator's state (a dict of plain ints and strings): save it to resume exactly."""
    return _rng.bit_generator.state


def set_state(state):
    """Restore a state from ``get_state()``. The CuPy generator that Dropout uses on the GPU is reseeded
    from the restored generator at its next use, so GPU dropout masks after a resume are repeatable
    but not the ones an uninterrupted run would have drawn (the CPU path's are)."""
    global _rng
    rng = numpy.random.default_rng()
    rng.bit_generator.state = state
    _rng = rng
