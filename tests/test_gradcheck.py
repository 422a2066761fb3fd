"""The gradient checker must be able to say no.

On BatchNorm it accepts the true gradient and rejects two classic wrong ones:
dx = 0, and dx without the terms that flow through the batch mean and variance
(the eval-mode gradient gamma*rstd*dy). A plain sum loss would accept dx = 0,
which is why tests/gradcheck.py uses a random upstream dy.
"""
import numpy as np
import pytest

from gradcheck import assert_grads_close, numerical_grads

from cubn.ref.batchnorm import batchnorm_backward, batchnorm_forward

EPS = 1e-5
NAMES = ["x", "gamma", "beta"]


def batchnorm_case(dy=None):
    """(numeric grads, analytic grads, rstd) of float64 BatchNorm on a small batch."""
    rng = np.random.default_rng(0)
    x = 3 + 2 * rng.standard_normal((3, 2, 5))
    gamma, beta = rng.uniform(0.5, 2.0, 2), rng.standard_normal(2)
    dy = rng.standard_normal(x.shape) if dy is None else dy
    numeric = numerical_grads(lambda *a: batchnorm_forward(*a, EPS)[0], [x, gamma, beta], dy)
    _, mean, _, rstd = batchnorm_forward(x, gamma, beta, EPS)
    return numeric, list(batchnorm_backward(dy, x, gamma, mean, rstd)), gamma * rstd, dy


def test_accepts_the_batchnorm_gradient():
    numeric, analytic, _, _ = batchnorm_case()
    assert_grads_close(analytic, numeric, NAMES)


@pytest.mark.parametrize("wrong", ["zero", "no mean and variance terms"])
def test_rejects_a_wrong_batchnorm_dx(wrong):
    numeric, analytic, scale, dy = batchnorm_case()
    analytic[0] = np.zeros_like(dy) if wrong == "zero" else scale[:, None] * dy
    with pytest.raises(AssertionError, match="grad of x"):
        assert_grads_close(analytic, numeric, NAMES)


def test_a_sum_loss_is_blind_to_dx():
    numeric, _, _, _ = batchnorm_case(dy=np.ones((3, 2, 5)))
    assert_grads_close([np.zeros((3, 2, 5))], numeric[:1], ["x"])
