"""Activation and dropout Functions: LeakyReLU, GELU (exact or tanh), SiLU, Dropout.

Arguments arrive checked (``cubn.nn.layers`` does that). Outputs keep the input's dtype.
"""
import math

import numpy

from .. import backend, random
from ..backend import get_array_module
from ..tensor import Function
from .math import Sigmoid

# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969),
# as in his SPECFUN routine CALERF: erf on [0, 0.46875], erfc on (0.46875, 4] and (4, inf).
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
      1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
      8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
      2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
      6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)


def _ratio(num, den, z):
    """Cody's Horner form: (num[-1]*z^n + num[0]*z^(n-1) + ... + num[-2]) / (z^n + den[0]*z^(n-1) + ... + den[-1])."""
    top, bottom = num[-1] * z, z
    for a, b in zip(num[:-2], den[:-1]):
        top, bottom = (top + a) * z, (bottom + b) * z
    return (top + num[-2]) / (bottom + den[-1])


def erfc(x):
    """Complementary error function, elementwise on a NumPy or CuPy float array (NumPy has none).

    Cody's rational approximations; computed in float32 for float16 input. In float64 it agrees
    with Python's ``math.erfc`` to a few ulp (relative error below 1e-15 for x up to 26, where
    erfc is 5e-296; tests/test_layers.py checks this), with no cancellation for large x, so
    ``0.5 * erfc(-x / sqrt(2))`` is an accurate normal CDF deep in the lower tail.
    Cost: all three ranges are evaluated everywhere and picked with ``where`` (no data-dependent
    indexing, so no device sync), about 100 elementwise array ops in all.
    """
    xp = get_array_module(x)
    x = x.astype(numpy.promote_types(x.dtype, numpy.float32), copy=False)
    y = xp.minimum(xp.abs(x), 30.0)  # erfc(27.3) already underflows float64; the clip avoids overflow warnings
    small = xp.minimum(y, 0.46875)
    mid, big = xp.clip(y, 0.46875, 4.0), xp.maximum(y, 4.0)
    # erfc(y) = exp(-y^2) * R(y) on the two outer ranges; exp(-y^2) is split as in CALERF to
    # keep the rounding error of y^2 out of the exponent.
    y16 = xp.trunc(y * 16) / 16
    tail = xp.exp(-y16 * y16) * xp.exp(-(y - y16) * (y + y16))
    asymptotic = (1 / math.sqrt(math.pi) - _ratio(_P, _Q, 1 / (big * big)) / (big * big)) / big
    upper = tail * xp.where(y <= 4, _ratio(_C, _D, mid), asymptotic)
    result = xp.where(y <= 0.46875, 1 - small * _ratio(_A, _B, small * small), upper)
    return xp.where(x < 0, 2 - result, result)


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


class GELU(Function):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF (Hendrycks & Gimpel 2016), PyTorch's default.

    approximate="none": Phi(x) = erfc(-x/sqrt(2)) / 2, exact to float64 rounding (see ``erfc``);
    approximate="tanh": Phi(x) ~ (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2, PyTorch's
    approximate='tanh'. The gradient is the derivative of the formula used.
    """

    def forward(self, x, approximate):
        xp = get_array_module(x)
        self.x, self.approximate = x.astype(numpy.promote_types(x.dtype, numpy.float32), copy=False), approximate
        if approximate == "tanh":
            self.t = xp.tanh(_SQRT_2_OVER_PI * (self.x + 0.044715 * self.x ** 3))
            return (0.5 * self.x * (1 + self.t)).astype(x.dtype, copy=False)
        self.cdf = 0.5 * erfc(-_SQRT_HALF * self.x)
        return (self.x * self.cdf).astype(x.dtype, copy=False)

    def backward(self, grad):
        x, xp = self.x, get_array_module(grad)
        if self.approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            return grad * (0.5 * (1 + self.t) + 0.5 * x * (1 - self.t * self.t) * inner)
        return grad * (self.cdf + x * _INV_SQRT_2PI * xp.exp(-0.5 * x * x))


class LeakyReLU(Function):
    """x where x > 0, negative_slope * x elsewhere (gradient negative_slope at 0, as in PyTorch)."""

    def forward(self, x, negative_slope):
        self.positive, self.slope = x > 0, negative_slope
        return get_array_module(x).where(self.positive, x, x * negative_slope)

    def backward(self, grad):
        return get_array_module(grad).where(self.positive, grad, grad * self.slope)


class SiLU(Sigmoid):
    """SiLU(x) = x * sigmoid(x) (also called swish); d/dx = s * (1 + x * (1 - s))."""

    def forward(self, x):
        self.x = x
        return x * super().forward(x)

    def backward(self, grad):
        s = self.out
        return grad * s * (1 + self.x * (1 - s))


_device_rng = [None, None]  # [the global NumPy Generator the CuPy one was seeded from, the CuPy RandomState]


def _uniform(x):
    """Uniform [0, 1) float32 values of x's shape, on x's device, repeatable under ``cubn.manual_seed``.

    NumPy: drawn from the global generator. CuPy: drawn on the device by a CuPy RandomState seeded
    once from the global generator (again after each ``manual_seed``), so no mask crosses the bus.
    """
    rng = random.get_rng()
    if not backend.is_cupy(x):
        return rng.random(x.shape, dtype=numpy.float32)
    if _device_rng[0] is not rng:
        _device_rng[:] = [rng, get_array_module(x).random.RandomState(int(rng.integers(2 ** 63)))]
    return _device_rng[1].random_sample(x.shape, dtype=numpy.float32)


class Dropout(Function):
    """Inverted dropout: each element kept with probability 1 - p and scaled by 1/(1 - p), else zeroed.

    The mask is drawn once in forward and reused by backward (``_uniform`` says where it comes from).
    """

    def forward(self, x, p):
        xp = get_array_module(x)
        self.mask = xp.where(_uniform(x) >= p, 1 / (1 - p), 0).astype(x.dtype)
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask
