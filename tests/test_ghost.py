"""GhostBatchNorm2d: per-virtual-batch normalization, pooled running statistics, BatchNorm2d in eval."""
import numpy
import pytest
from conftest import to_dev
from gradcheck import check_autodiff

import cubn
import cubn.nn.functional as F
from cubn import nn
from cubn.nn.ghost import concat, ghost_batch_norm

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True


def rand(shape, seed=0, loc=0.0, scale=1.0, dtype=numpy.float32):
    return (loc + scale * numpy.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def ref_ghost(x, v, gamma, beta, eps):
    """float64 reference: each chunk of v samples normalized with its own (biased) statistics."""
    x = x.astype(numpy.float64)
    out = []
    for start in range(0, x.shape[0], v):
        c = x[start:start + v]
        mean = c.mean(axis=(0, 2, 3), keepdims=True)
        var = ((c - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        out.append((c - mean) / numpy.sqrt(var + eps) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1))
    return numpy.concatenate(out)


def channel_stats(x):
    """Per-channel mean and unbiased variance of the whole batch, float64."""
    flat = numpy.moveaxis(x.astype(numpy.float64), 1, 0).reshape(x.shape[1], -1)
    return flat.mean(1), flat.var(1, ddof=1)


def make(C, v, seed=1, **kw):
    layer = nn.GhostBatchNorm2d(C, v, **kw)
    if layer.affine:
        layer.weight.data[...] = rand(C, seed, loc=1.0, scale=0.5)
        layer.bias.data[...] = rand(C, seed + 1)
    return layer


@pytest.mark.parametrize("N, v", [(10, 4), (8, 4), (9, 2), (5, 8)])
def test_training_output_matches_per_chunk_reference(device, N, v):
    x = rand((N, 3, 4, 5), loc=2.0, scale=3.0)
    layer = make(3, v).to(device)
    y = layer(to_dev(x, device))
    expected = ref_ghost(x, v, layer.weight.numpy(), layer.bias.numpy(), layer.eps)
    numpy.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert y.dtype == numpy.float32


def test_chunks_really_are_normalized_separately():
    x = rand((8, 2, 3, 3))
    x[4:] += 10.0  # second virtual batch far away: BatchNorm2d would not center it
    y = nn.GhostBatchNorm2d(2, 4, affine=False)(x).numpy()
    for chunk in (y[:4], y[4:]):
        numpy.testing.assert_allclose(chunk.mean(axis=(0, 2, 3)), 0, atol=1e-5)
        numpy.testing.assert_allclose(chunk.var(axis=(0, 2, 3)), 1, rtol=1e-3)


@pytest.mark.parametrize("N, v", [(7, 3), (6, 3)])
def test_gradients_match_finite_differences(N, v):
    x = rand((N, 2, 2, 2), seed=3, dtype=numpy.float64)
    w, b = rand(2, 4, loc=1.0, dtype=numpy.float64), rand(2, 5, dtype=numpy.float64)
    check_autodiff(lambda x, w, b: ghost_batch_norm(x, v, w, b, eps=1e-5), x, w, b)


def test_module_gradient_equals_functional_gradient():
    x = rand((7, 2, 3, 3), seed=6)
    dy = rand((7, 2, 3, 3), seed=7)
    layer = make(2, 3)
    t = cubn.tensor(x, requires_grad=True)
    layer(t).backward(dy)
    t2 = cubn.tensor(x, requires_grad=True)
    w = cubn.tensor(layer.weight.numpy(), requires_grad=True)
    b = cubn.tensor(layer.bias.numpy(), requires_grad=True)
    ghost_batch_norm(t2, 3, w, b).backward(dy)
    for got, want in ((t.grad, t2.grad), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad)):
        numpy.testing.assert_array_equal(got, want)


def test_concat_backward_splits_the_gradient():
    a = cubn.tensor(rand((2, 3), dtype=numpy.float64), requires_grad=True)
    b = cubn.tensor(rand((1, 3), 1, dtype=numpy.float64))  # no grad wanted
    c = cubn.tensor(rand((3, 3), 2, dtype=numpy.float64), requires_grad=True)
    out = concat([a, b, c])
    dy = rand((6, 3), 3, dtype=numpy.float64)
    out.backward(dy)
    numpy.testing.assert_array_equal(a.grad, dy[:2])
    numpy.testing.assert_array_equal(c.grad, dy[3:])
    assert b.grad is None


def test_running_stats_use_pooled_full_batch_statistics(device):
    layer = make(3, 4, momentum=0.25).to(device)
    rm, rv = numpy.zeros(3), numpy.ones(3)
    for step, N in enumerate((10, 7, 12)):
        x = rand((N, 3, 2, 3), seed=10 + step, loc=step, scale=1 + step)
        layer(to_dev(x, device))
        mean, var = channel_stats(x)  # pooled over the sub-batches = the whole batch, unbiased over N*H*W
        rm, rv = 0.75 * rm + 0.25 * mean, 0.75 * rv + 0.25 * var
    numpy.testing.assert_allclose(layer.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(layer.running_var.numpy(), rv, rtol=1e-5)
    assert int(layer.num_batches_tracked.numpy()) == 3


def test_biased_running_var_estimator_is_honoured():
    layer = make(2, 3, momentum=1.0)
    layer.running_var_estimator = "biased"
    x = rand((7, 2, 2, 2), seed=4)
    layer(x)
    flat = numpy.moveaxis(x.astype(numpy.float64), 1, 0).reshape(2, -1)
    numpy.testing.assert_allclose(layer.running_var.numpy(), flat.var(1), rtol=1e-5)


def test_momentum_none_is_a_cumulative_average():
    layer = make(2, 2, momentum=None)
    xs = [rand((5, 2, 2, 2), seed=s, loc=s) for s in range(3)]
    for x in xs:
        layer(x)
    numpy.testing.assert_allclose(layer.running_mean.numpy(), numpy.mean([channel_stats(x)[0] for x in xs], 0),
                                  rtol=1e-5, atol=1e-6)


def test_eval_equals_batchnorm2d_eval(device):
    ghost, bn = make(3, 2), nn.BatchNorm2d(3)
    ghost.running_mean.data[...] = rand(3, 8)
    ghost.running_var.data[...] = rand(3, 9) ** 2 + 0.5
    bn.load_state_dict(ghost.state_dict())
    ghost.eval().to(device)
    bn.eval().to(device)
    x = to_dev(rand((5, 3, 4, 4), seed=2), device)
    numpy.testing.assert_array_equal(ghost(x).numpy(), bn(x).numpy())


def test_virtual_batch_at_least_n_is_batchnorm2d():
    ghost, bn = make(3, 16), nn.BatchNorm2d(3)
    bn.load_state_dict(ghost.state_dict())
    x = rand((6, 3, 3, 3), seed=5)
    numpy.testing.assert_array_equal(ghost(x).numpy(), bn(x).numpy())
    numpy.testing.assert_allclose(ghost.running_var.numpy(), bn.running_var.numpy(), rtol=1e-6)


def test_last_virtual_batch_with_one_value_per_channel_is_an_error():
    layer = make(2, 4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(rand((9, 2, 1, 1)))
    assert int(layer.num_batches_tracked.numpy()) == 0
    layer(rand((9, 2, 2, 1)))  # one sample, but two values per channel: fine
    layer.eval()(rand((9, 2, 1, 1)))  # eval accepts anything


def test_no_stats_update_and_untracked_layers_leave_no_trace():
    layer = make(2, 2)
    with F.no_stats_update():
        layer(rand((6, 2, 2, 2)))
    assert (layer.running_mean.numpy() == 0).all() and int(layer.num_batches_tracked.numpy()) == 0
    free = nn.GhostBatchNorm2d(2, 2, track_running_stats=False).eval()
    y = free(rand((4, 2, 2, 2), loc=3.0)).numpy()  # batch statistics even in eval, per chunk
    numpy.testing.assert_allclose(y[:2].mean(axis=(0, 2, 3)), 0, atol=1e-5)


def test_empty_batch_and_argument_errors():
    layer = make(2, 3)
    assert layer(numpy.zeros((0, 2, 3, 3), numpy.float32)).shape == (0, 2, 3, 3)
    assert int(layer.num_batches_tracked.numpy()) == 0
    with pytest.raises(ValueError, match="virtual_batch_size"):
        nn.GhostBatchNorm2d(2, 0)
    with pytest.raises(ValueError, match="4-D"):
        layer(rand((6, 2, 3)))
    assert "virtual_batch_size=3" in repr(layer)
    options = nn.GhostBatchNorm2d(2, 3, decay=0.9, running_var_estimator="biased")  # BatchNorm2d's options
    assert options.momentum == pytest.approx(0.1) and options.running_var_estimator == "biased"


def test_nonfinite_batch_skips_the_pooled_update_like_batchnorm():
    layer = make(2, 3)
    x = rand((7, 2, 2, 2), seed=12)
    x[5, 1, 0, 0] = numpy.nan
    layer(x)
    assert (layer.running_mean.numpy() == 0).all() and (layer.running_var.numpy() == 1).all()
    assert int(layer.num_batches_tracked.numpy()) == 0 and int(layer.num_batches_skipped.numpy()) == 1
