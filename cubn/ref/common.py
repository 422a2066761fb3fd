"""Helpers shared by the NumPy twins."""
import numpy


def acc_dtype(dtype):
    """Accumulation and statistics dtype: float64 for float64 input, float32 otherwise."""
    return numpy.float64 if numpy.dtype(dtype) == numpy.float64 else numpy.float32
