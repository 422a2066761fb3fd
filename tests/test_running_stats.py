"""Running statistics and modes of the layers that keep them (BatchNorm, InstanceNorm, Batch Renorm)."""
import numpy
import pytest

import cubn
import cubn.nn as nn
from cubn import backend
from conftest import to_dev


def rand(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * numpy.random.default_rng(seed).standard_normal(shape)).astype(numpy.float32)


def stats_of(layer):
    return {k: backend.to_numpy(v).copy() for k, v in layer.state_dict().items()}


def channel_stats(x):
    """Per-channel mean and unbiased variance of (N, C, *spatial), in float64."""
    x = numpy.moveaxis(x.astype(numpy.float64), 1, 0).reshape(x.shape[1], -1)
    return x.mean(1), x.var(1, ddof=1)


@pytest.mark.parametrize("momentum", [0.1, 1.0, 0.0])
def test_momentum_meaning_after_one_step(device, momentum):
    x = rand((8, 3, 4, 5), loc=2.0, scale=3.0)
    bn = nn.BatchNorm2d(3, momentum=momentum).to(device)
    bn(to_dev(x, device))
    mean, var = channel_stats(x)
    numpy.testing.assert_allclose(bn.running_mean.numpy(), momentum * mean, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(bn.running_var.numpy(), (1 - momentum) + momentum * var, rtol=1e-5)
    assert int(bn.num_batches_tracked.numpy()) == 1


def test_momentum_none_is_cumulative_average_over_unequal_batches(device):
    bn = nn.BatchNorm1d(2, momentum=None).to(device)
    batches = [rand((n, 2), seed=n, loc=n, scale=1 + n) for n in (4, 10, 7)]
    for b in batches:
        bn(to_dev(b, device))
    means = numpy.array([channel_stats(b)[0] for b in batches])
    variances = numpy.array([channel_stats(b)[1] for b in batches])
    # Each batch weighs 1/k whatever its size: the plain mean of per-batch statistics.
    numpy.testing.assert_allclose(bn.running_mean.numpy(), means.mean(0), rtol=1e-5)
    numpy.testing.assert_allclose(bn.running_var.numpy(), variances.mean(0), rtol=1e-5)


def test_eval_uses_and_never_mutates_running_stats(device):
    bn = nn.BatchNorm2d(3).to(device)
    for seed in range(3):
        bn(to_dev(rand((4, 3, 2, 2), seed, loc=1.0), device))
    before = stats_of(bn)
    bn.eval()
    x = rand((5, 3, 2, 2), 9)
    y = bn(to_dev(x, device)).numpy()
    after = stats_of(bn)
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), k
    rm, rv = before["running_mean"], before["running_var"]
    expect = (x - rm[:, None, None]) / numpy.sqrt(rv[:, None, None] + 1e-5)
    numpy.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_track_running_stats_false_uses_batch_stats_and_has_no_buffers(device):
    bn = nn.BatchNorm1d(4, track_running_stats=False).to(device)
    assert bn.running_mean is None and "running_mean" not in bn.state_dict()
    x = rand((6, 4), loc=3.0)
    for mode in (bn.train, bn.eval):
        mode()
        y = bn(to_dev(x, device)).numpy()
        numpy.testing.assert_allclose(y.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(3), lambda: nn.BatchRenorm2d(3), lambda: nn.GroupNorm(3, 3),
                                  lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                                  lambda: nn.LayerNorm((3, 2, 2)), lambda: nn.RMSNorm((2, 2))])
def test_empty_batch_keeps_stats_and_gives_zero_grads(device, make):
    layer = make().to(device)
    layer(to_dev(rand((4, 3, 2, 2), loc=1.0), device))
    before = stats_of(layer)
    x = cubn.tensor(to_dev(numpy.zeros((0, 3, 2, 2), numpy.float32), device), requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 3, 2, 2)
    y.backward(to_dev(numpy.zeros((0, 3, 2, 2), numpy.float32), device))
    assert x.grad.shape == (0, 3, 2, 2)
    for p in layer.parameters():
        assert p.grad.shape == p.shape
        numpy.testing.assert_array_equal(backend.to_numpy(p.grad), 0)
    after = stats_of(layer)
    for k in before:
        assert before[k].tobytes() == after[k].tobytes(), k


def test_rejected_batch_is_not_counted(device):
    bn = nn.BatchNorm1d(3).to(device)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(to_dev(rand((1, 3)), device))
    assert int(bn.num_batches_tracked.numpy()) == 0
    bn.eval()
    assert bn(to_dev(rand((1, 3)), device)).shape == (1, 3)  # eval accepts one sample


def test_repeated_forwards_before_backward_use_their_own_statistics(device):
    x1, x2 = rand((5, 2, 3), 1, loc=-1.0), rand((5, 2, 3), 2, loc=4.0, scale=2.0)
    dy = rand((5, 2, 3), 3)

    def grads(xs):
        bn = nn.BatchNorm1d(2).double().to(device)
        ts = [cubn.tensor(to_dev(x.astype(numpy.float64), device), requires_grad=True) for x in xs]
        outs = [bn(t) for t in ts]
        for out in outs:
            out.backward(to_dev(dy.astype(numpy.float64), device))
        return [t.grad for t in ts], bn.weight.grad

    (g1, g2), wg = grads([x1, x2])
    (s1,), w1 = grads([x1])
    (s2,), w2 = grads([x2])
    numpy.testing.assert_allclose(backend.to_numpy(g1), backend.to_numpy(s1), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(backend.to_numpy(g2), backend.to_numpy(s2), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(backend.to_numpy(wg), backend.to_numpy(w1 + w2), rtol=1e-12, atol=1e-12)


def test_reset_running_stats_and_state_dict_round_trip(device):
    bn = nn.BatchNorm2d(3).to(device)
    bn.weight.data[...] = 2.0
    for seed in range(2):
        bn(to_dev(rand((4, 3, 2, 2), seed, loc=5.0), device))
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked", "num_batches_skipped"]
    fresh = nn.BatchNorm2d(3).to(device)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert backend.to_numpy(v).tobytes() == backend.to_numpy(state[k]).tobytes(), k
    bn.reset_running_stats()
    numpy.testing.assert_array_equal(bn.running_mean.numpy(), 0)
    numpy.testing.assert_array_equal(bn.running_var.numpy(), 1)
    assert int(bn.num_batches_tracked.numpy()) == 0
    numpy.testing.assert_array_equal(bn.weight.numpy(), 2.0)  # parameters untouched
    # state_dict holds copies: training on does not change a saved state
    bn(to_dev(rand((4, 3, 2, 2), 7, loc=5.0), device))
    assert int(backend.to_numpy(state["num_batches_tracked"])) == 2


def test_instance_norm_running_stats_are_batch_averages(device):
    x = rand((4, 3, 5, 6), loc=2.0, scale=3.0)
    inorm = nn.InstanceNorm2d(3, track_running_stats=True, momentum=0.5).to(device)
    y = inorm(to_dev(x, device)).numpy()
    x64 = x.astype(numpy.float64).reshape(4, 3, -1)
    numpy.testing.assert_allclose(inorm.running_mean.numpy(), 0.5 * x64.mean(2).mean(0), rtol=1e-5)
    numpy.testing.assert_allclose(inorm.running_var.numpy(), 0.5 + 0.5 * x64.var(2, ddof=1).mean(0), rtol=1e-5)
    numpy.testing.assert_allclose(y.reshape(4, 3, -1).mean(2), 0, atol=1e-5)
    inorm.eval()  # eval now uses the running statistics
    rm, rv = inorm.running_mean.numpy(), inorm.running_var.numpy()
    y_eval = inorm(to_dev(x, device)).numpy()
    expect = (x - rm[:, None, None]) / numpy.sqrt(rv[:, None, None] + 1e-5)
    numpy.testing.assert_allclose(y_eval, expect, rtol=1e-5, atol=1e-5)


def test_batch_renorm_moving_statistics_follow_the_paper(device):
    eps, m = 1e-3, 0.25
    brn = nn.BatchRenorm1d(3, momentum=m, eps=eps).to(device)
    x = rand((16, 3), loc=3.0, scale=2.0)
    brn(to_dev(x, device))
    x64 = x.astype(numpy.float64)
    sigma = numpy.sqrt(x64.var(0) + eps)  # biased variance, as the paper's sigma_B
    numpy.testing.assert_allclose(brn.running_mean.numpy(), m * x64.mean(0), rtol=1e-5)
    numpy.testing.assert_allclose(brn.running_std.numpy(), 1 + m * (sigma - 1), rtol=1e-5)
    brn.eval()
    y = brn(to_dev(x, device)).numpy()
    expect = (x64 - brn.running_mean.numpy()) / brn.running_std.numpy()
    numpy.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)


def test_batch_renorm_warmup_schedule_and_resume(device):
    brn = nn.BatchRenorm2d(2, rmax=3.0, dmax=5.0, warmup_steps=2, ramp_steps=4).to(device)
    assert brn.limits(0) == (1.0, 0.0) and brn.limits(1) == (1.0, 0.0)
    assert brn.limits(4) == (2.0, 2.5)
    assert brn.limits(6) == (3.0, 5.0) and brn.limits(100) == (3.0, 5.0)
    for seed in range(3):
        brn(to_dev(rand((4, 2, 3, 3), seed, loc=1.0), device))
    resumed = nn.BatchRenorm2d(2, rmax=3.0, dmax=5.0, warmup_steps=2, ramp_steps=4)
    resumed.load_state_dict(brn.state_dict())
    assert resumed.limits() == brn.limits() == (1.5, 1.25)


def test_batch_renorm_during_warmup_is_batch_norm(device):
    x = rand((6, 3, 2, 2), loc=2.0, scale=4.0)
    brn = nn.BatchRenorm2d(3, warmup_steps=10).to(device)
    brn.running_mean.data[...] = 5.0  # far from the batch: r and d would clip if they were allowed
    bn = nn.BatchNorm2d(3).to(device)
    numpy.testing.assert_allclose(brn(to_dev(x, device)).numpy(), bn(to_dev(x, device)).numpy(), atol=1e-6)
