"""Masked statistics (issue 6, item 9): BatchNorm, GroupNorm and LayerNorm over the valid entries of a
padded batch. Checked against an independent float64 NumPy reference written here, and with float64
finite differences (tests/gradcheck.py)."""
import numpy
import pytest

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn import backend
from conftest import to_dev
from gradcheck import check_autodiff

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True

EPS = 1e-5


def rng(seed=0):
    return numpy.random.default_rng(seed)


def lengths_mask(lengths, L):
    """(N, L) bool: True for the first lengths[n] positions of each sequence."""
    return numpy.arange(L)[None, :] < numpy.asarray(lengths)[:, None]


def t(a, device, requires_grad=False):
    return cubn.tensor(to_dev(a, device), requires_grad=requires_grad)


# ---- float64 references, straight from the formulas ------------------------------------------
def ref_masked_bn(x, mask, gamma, beta, eps=EPS):
    """(y, mean, biased var, n) of BN on (N, C, L) with an (N, L) mask; y = 0 where masked."""
    x = x.astype(numpy.float64)
    y = numpy.zeros_like(x)
    C = x.shape[1]
    mean, var = numpy.zeros(C), numpy.zeros(C)
    for c in range(C):
        values = x[:, c][mask]
        mean[c], var[c] = values.mean(), ((values - values.mean()) ** 2).mean()
        y[:, c][mask] = gamma[c] * (values - mean[c]) / numpy.sqrt(var[c] + eps) + beta[c]
    return y, mean, var, int(mask.sum())


def ref_masked_bn_dx(x, mask, gamma, dy, eps=EPS):
    """d(sum(y * dy))/dx of masked BN: BN's backward over the valid entries, 0 at the others."""
    x, dy = x.astype(numpy.float64), dy.astype(numpy.float64)
    dx = numpy.zeros_like(x)
    for c in range(x.shape[1]):
        v, g = x[:, c][mask], dy[:, c][mask]
        rstd = 1 / numpy.sqrt(v.var() + eps)
        xhat = (v - v.mean()) * rstd
        dx[:, c][mask] = gamma[c] * rstd * (g - g.mean() - xhat * (g * xhat).mean())
    return dx


def ref_masked_rows(x, mask, eps=EPS):
    """Normalize each row of (R, K) over its valid entries (0 where masked or nothing is valid)."""
    y = numpy.zeros_like(x, dtype=numpy.float64)
    for r in range(x.shape[0]):
        v = x[r][mask[r]].astype(numpy.float64)
        if v.size:
            y[r][mask[r]] = (v - v.mean()) / numpy.sqrt(v.var() + eps)
    return y


# ---- BatchNorm ---------------------------------------------------------------------------------------
def padded_batch(N=4, C=3, L=7, lengths=(7, 3, 5, 1), seed=0, dtype=numpy.float64):
    x = (2.0 + 3.0 * rng(seed).standard_normal((N, C, L))).astype(dtype)
    mask = lengths_mask(lengths, L)
    x[:, :, :][~numpy.broadcast_to(mask[:, None, :], x.shape)] = 1e6  # padding garbage must not count
    gamma, beta = 1 + rng(seed + 1).standard_normal(C), rng(seed + 2).standard_normal(C)
    return x, mask, gamma, beta


def test_masked_batch_norm_matches_ref64_and_updates_with_the_true_count(device):
    x, mask, gamma, beta = padded_batch()
    bn = nn.BatchNorm1d(3).double().to(device)
    bn.weight.data[...] = to_dev(gamma, device)
    bn.bias.data[...] = to_dev(beta, device)
    y = bn(t(x, device), mask=to_dev(mask, device))
    y_ref, mean, var, n = ref_masked_bn(x, mask, gamma, beta)
    assert n == 16
    numpy.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-10, atol=1e-12)
    numpy.testing.assert_array_equal(y.numpy()[~numpy.broadcast_to(mask[:, None, :], x.shape)], 0)
    numpy.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean, rtol=1e-10)
    numpy.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-10)
    assert int(bn.num_batches_tracked.numpy()) == 1


def test_masked_batch_norm_is_batch_norm_of_the_unpadded_values(device):
    x, mask, gamma, beta = padded_batch(dtype=numpy.float32)
    packed = numpy.concatenate([x[n, :, mask[n]] for n in range(len(x))], axis=0)  # (valid, C)
    y = F.batch_norm(t(x, device), None, None, gamma.astype(numpy.float32), beta.astype(numpy.float32),
                     training=True, mask=mask).numpy()
    expect = F.batch_norm(t(packed, device), None, None, gamma.astype(numpy.float32), beta.astype(numpy.float32),
                          training=True).numpy()
    got = numpy.concatenate([y[n, :, mask[n]] for n in range(len(y))], axis=0)
    numpy.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
    assert y.dtype == numpy.float32


def test_masked_batch_norm_gradients():
    x, mask, gamma, beta = padded_batch(N=3, C=2, L=4, lengths=(4, 2, 3))

    def fn(xt, w, b):
        return F.batch_norm(xt, None, None, w, b, training=True, mask=mask)

    check_autodiff(fn, x, gamma, beta)
    # against the reference backward, and exactly 0 at masked positions
    xt = cubn.tensor(x, requires_grad=True)
    dy = rng(7).standard_normal(x.shape)
    fn(xt, cubn.tensor(gamma), cubn.tensor(beta)).backward(dy)
    numpy.testing.assert_allclose(xt.grad, ref_masked_bn_dx(x, mask, gamma, dy), rtol=1e-9, atol=1e-11)
    assert (xt.grad[~numpy.broadcast_to(mask[:, None, :], x.shape)] == 0).all()


def test_nan_in_padding_reaches_nothing(device):
    x, mask, _, _ = padded_batch(dtype=numpy.float32)
    x[~numpy.broadcast_to(mask[:, None, :], x.shape)] = numpy.nan
    bn = nn.BatchNorm1d(3, nonfinite="raise").to(device)
    xt = t(x, device, requires_grad=True)
    y = bn(xt, mask=mask)
    y.backward(to_dev(numpy.ones(x.shape, numpy.float32), device))
    assert numpy.isfinite(y.numpy()).all() and numpy.isfinite(backend.to_numpy(xt.grad)).all()
    assert numpy.isfinite(bn.running_var.numpy()).all() and int(bn.num_batches_tracked.numpy()) == 1


def test_fully_masked_batch_changes_nothing_and_makes_no_nan(device):
    x, _, _, _ = padded_batch(dtype=numpy.float32)
    mask = numpy.zeros((4, 7), bool)
    bn = nn.BatchNorm1d(3).to(device)
    bn.bias.data[...] = to_dev(numpy.ones(3, numpy.float32), device)
    before = {k: backend.to_numpy(v).tobytes() for k, v in bn.state_dict().items()}
    xt = t(x, device, requires_grad=True)
    y = bn(xt, mask=to_dev(mask, device))
    y.backward(to_dev(numpy.ones(x.shape, numpy.float32), device))
    numpy.testing.assert_array_equal(y.numpy(), 0)
    numpy.testing.assert_array_equal(backend.to_numpy(xt.grad), 0)
    for p in (bn.weight, bn.bias):
        numpy.testing.assert_array_equal(backend.to_numpy(p.grad), 0)
    assert before == {k: backend.to_numpy(v).tobytes() for k, v in bn.state_dict().items()}


def test_masked_degenerate_and_eval(device):
    x, _, _, _ = padded_batch(dtype=numpy.float32)
    one = numpy.zeros((4, 7), bool)
    one[2, 3] = True
    with pytest.raises(ValueError, match="Expected more than 1 unmasked value per channel when training"):
        nn.BatchNorm1d(3).to(device)(t(x, device), mask=one)
    bn = nn.BatchNorm1d(3, degenerate="skip_update").to(device)
    bn.bias.data[...] = to_dev(numpy.array([1.0, 2.0, 3.0], numpy.float32), device)
    y = bn(t(x, device), mask=one).numpy()
    numpy.testing.assert_array_equal(y[2, :, 3], [1.0, 2.0, 3.0])
    assert numpy.count_nonzero(y) == 3 and int(bn.num_batches_tracked.numpy()) == 0
    bn.eval()  # eval: the running statistics, and 0 at masked positions
    mask = lengths_mask((7, 3, 5, 1), 7)
    y = bn(t(x, device), mask=mask).numpy()
    expect = (x - 0.0) / numpy.sqrt(1.0 + EPS) + numpy.array([1.0, 2.0, 3.0])[:, None]
    numpy.testing.assert_allclose(y, expect * mask[:, None, :], rtol=1e-6)


# ---- GroupNorm and LayerNorm -------------------------------------------------------------------------
def test_masked_group_norm_matches_ref64_with_a_fully_masked_sample(device):
    N, C, H, W, G = 3, 4, 2, 3, 2
    x = 1.0 + 2.0 * rng(3).standard_normal((N, C, H, W))
    mask = rng(4).random((N, H, W)) > 0.3
    mask[1] = False                                          # a sample with no valid position
    gamma, beta = 1 + rng(5).standard_normal(C), rng(6).standard_normal(C)
    y = F.group_norm(t(x, device), G, to_dev(gamma, device), to_dev(beta, device), mask=to_dev(mask, device))
    m = numpy.broadcast_to(mask[:, None], x.shape).reshape(N * G, -1)
    xhat = ref_masked_rows(x.reshape(N * G, -1), m).reshape(x.shape)
    expect = (gamma[:, None, None] * xhat + beta[:, None, None]) * mask[:, None]
    numpy.testing.assert_allclose(y.numpy(), expect, rtol=1e-10, atol=1e-12)
    assert (y.numpy()[1] == 0).all()
    gn = nn.GroupNorm(G, C).double().to(device)
    numpy.testing.assert_allclose(gn(t(x, device), mask=mask).numpy(), xhat * mask[:, None], rtol=1e-10, atol=1e-12)
    if device == "cpu":  # finite differences on the NumPy path
        check_autodiff(lambda xt, w, b: F.group_norm(xt, G, w, b, mask=mask), x, gamma, beta)


def test_masked_layer_norm_matches_ref64_and_gradcheck(device):
    N, L, C = 3, 5, 4
    x = rng(8).standard_normal((N, L, C)) * 2 + 0.5
    mask = rng(9).random((N, L, C)) > 0.25
    mask[0, 1] = False                                        # a row with nothing valid
    gamma, beta = 1 + rng(10).standard_normal(C), rng(11).standard_normal(C)
    y = F.layer_norm(t(x, device), (C,), to_dev(gamma, device), to_dev(beta, device), mask=to_dev(mask, device))
    xhat = ref_masked_rows(x.reshape(-1, C), mask.reshape(-1, C)).reshape(x.shape)
    numpy.testing.assert_allclose(y.numpy(), (gamma * xhat + beta) * mask, rtol=1e-10, atol=1e-12)
    tokens = mask[:, :, :1]  # a padding mask per token, (N, L, 1), broadcast over C
    ln = nn.LayerNorm(C).double().to(device)
    numpy.testing.assert_allclose(ln(t(x, device), mask=tokens).numpy(),
                                  F.layer_norm(t(x, device), (C,)).numpy() * tokens, rtol=1e-12, atol=1e-12)
    if device == "cpu":
        check_autodiff(lambda xt, w, b: F.layer_norm(xt, (C,), w, b, mask=mask), x, gamma, beta)


def test_masked_group_norm_degenerate_in_training(device):
    x = rng(0).standard_normal((2, 2, 4)).astype(numpy.float32)
    mask = numpy.zeros((2, 4), bool)
    mask[0, :2] = True
    mask[1, 1] = True  # sample 1: one valid value per group
    with pytest.raises(ValueError, match="more than 1 unmasked value per group"):
        nn.GroupNorm(2, 2).to(device)(t(x, device), mask=mask)
    y = nn.GroupNorm(2, 2, degenerate="skip_update").to(device)(t(x, device), mask=mask).numpy()
    assert numpy.isfinite(y).all() and (y[1] == 0).all()


# ---- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,error,match", [
    (lambda x: F.batch_norm(x, None, None, training=True, mask=numpy.ones((4, 7))), TypeError,
     "mask must have dtype bool"),
    (lambda x: F.batch_norm(x, None, None, training=True, mask=numpy.ones((3, 7), bool)), ValueError,
     r"mask of shape \(3, 7\) must broadcast to the input's shape without the channel axis \(4, 7\)"),
    (lambda x: F.layer_norm(x, (7,), mask=numpy.ones((4, 7, 1), bool)), ValueError,
     r"must broadcast to the input's shape \(4, 3, 7\)"),
    (lambda x: F.group_norm(x, 3, mask=[True] * 7), TypeError, "mask must be a bool array or Tensor"),
    (lambda x: nn.BatchRenorm1d(3)(x, mask=numpy.ones((4, 7), bool)), TypeError, "does not take mask="),
])
def test_mask_errors(device, call, error, match):
    with pytest.raises(error, match=match):
        call(t(padded_batch(dtype=numpy.float32)[0], device))
