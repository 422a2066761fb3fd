"""Issue 6 policies of the layers with running statistics: momentum/decay, the running-variance
estimator, nonfinite batches, degenerate batches, frozen statistics, and Batch Renorm schedules
saved in the state dict. Masked statistics are in test_masked_norm.py."""
import math

import numpy
import pytest

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn import backend
from conftest import to_dev

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True

# NaN batches are fed on purpose; NumPy's warnings about them are expected.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def rand(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * numpy.random.default_rng(seed).standard_normal(shape)).astype(numpy.float32)


def t(a, device, requires_grad=False):
    return cubn.tensor(to_dev(a, device), requires_grad=requires_grad)


def state(layer):
    return {k: backend.to_numpy(v).copy() for k, v in layer.state_dict().items()}


def assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def channel_stats64(x):
    """Per-channel (mean, biased var, n) of (N, C, *spatial) in float64."""
    v = numpy.moveaxis(x.astype(numpy.float64), 1, 0).reshape(x.shape[1], -1)
    return v.mean(1), v.var(1), v.shape[1]


# ---- momentum / decay ----------------------------------------------------------------------
@pytest.mark.parametrize("make_pair", [
    lambda **kw: nn.BatchNorm2d(3, **kw),
    lambda **kw: nn.InstanceNorm2d(3, track_running_stats=True, **kw),
])
def test_decay_gives_the_same_buffers_as_one_minus_momentum(device, make_pair):
    a, b = make_pair(momentum=0.1).to(device), make_pair(decay=0.9).to(device)
    assert b.decay == 0.9 and b.momentum == pytest.approx(0.1, abs=1e-15) and a.decay is None
    for seed in range(3):
        x = t(rand((4, 3, 3, 3), seed, loc=seed, scale=2.0), device)
        a(x), b(x)
    assert_same_state(state(a), state(b))
    assert "decay=0.9" in repr(b) and "momentum" not in repr(b)


def test_batch_renorm_decay_and_functional_decay(device):
    a, b = nn.BatchRenorm2d(3).to(device), nn.BatchRenorm2d(3, decay=0.99).to(device)
    x = t(rand((4, 3, 2, 2), loc=2.0), device)
    a(x), b(x)
    assert_same_state(state(a), state(b))
    buffers = [[to_dev(numpy.zeros(3, numpy.float32), device), to_dev(numpy.ones(3, numpy.float32), device)]
               for _ in range(2)]
    F.batch_norm(x.data[:, :, 0], *buffers[0], training=True, momentum=0.25)
    F.batch_norm(x.data[:, :, 0], *buffers[1], training=True, decay=0.75)
    for u, v in zip(*buffers, strict=True):
        assert backend.to_numpy(u).tobytes() == backend.to_numpy(v).tobytes()


def test_decay_meaning_after_one_step(device):
    x = rand((8, 3, 4), loc=2.0, scale=3.0)
    bn = nn.BatchNorm1d(3, decay=0.75).to(device)  # new = 0.75 * old + 0.25 * batch
    bn(t(x, device))
    mean, var, n = channel_stats64(x)
    numpy.testing.assert_allclose(bn.running_mean.numpy(), 0.25 * mean, rtol=1e-5)
    numpy.testing.assert_allclose(bn.running_var.numpy(), 0.75 + 0.25 * var * n / (n - 1), rtol=1e-5)


@pytest.mark.parametrize("call", [
    lambda: nn.BatchNorm2d(8, momentum=0.1, decay=0.9),
    lambda: nn.BatchRenorm2d(8, momentum=0.01, decay=0.99),
    lambda: nn.InstanceNorm2d(8, momentum=0.1, decay=0.9),
    lambda: F.batch_norm(numpy.ones((2, 8), numpy.float32), None, None, training=True, momentum=0.1, decay=0.9),
])
def test_momentum_and_decay_together_is_an_error_naming_both(call):
    with pytest.raises(ValueError, match=r"momentum=0\.\d+ and decay=0\.9"):
        call()


@pytest.mark.parametrize("make,match", [
    (lambda: nn.BatchNorm2d(3, decay=1.5), r"decay must be a number in \[0, 1\], got 1.5"),
    (lambda: nn.BatchNorm2d(3, decay=None, momentum="x"), r"momentum must be a number in \[0, 1\] or None"),
    (lambda: nn.BatchNorm2d(3, running_var_estimator="sample"), "running_var_estimator must be one of 'unbiased'"),
    (lambda: nn.BatchNorm2d(3, nonfinite="ignore"), "nonfinite must be one of 'skip', 'raise', 'propagate'"),
    (lambda: nn.BatchNorm2d(3, degenerate=True), "degenerate must be one of 'raise', 'use_running', 'skip_update'"),
    (lambda: nn.BatchNorm2d(3, track_running_stats=False, degenerate="use_running"), "keeps none"),
    (lambda: nn.InstanceNorm2d(3, degenerate="use_running"), "keeps none"),
    (lambda: nn.GroupNorm(1, 3, degenerate="use_running"), "GroupNorm keeps no running statistics"),
])
def test_policy_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_defaults_print_as_before_and_accept_decay_alone():
    assert repr(nn.BatchNorm2d(8)) == "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    bn = nn.BatchNorm2d(8, decay=0.99)
    assert bn.momentum == pytest.approx(0.01, abs=1e-15)
    assert repr(nn.BatchNorm2d(8, nonfinite="raise", degenerate="skip_update", running_var_estimator="biased")) == (
        "BatchNorm2d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
        "running_var_estimator='biased', nonfinite='raise', degenerate='skip_update')")


# ---- running variance estimator -----------------------------------------------------------------
def test_biased_estimator_matches_a_hand_computation(device):
    batches = [rand((5, 2, 3), seed, loc=seed - 1.0, scale=1.0 + seed) for seed in range(3)]
    bn = nn.BatchNorm1d(2, momentum=0.3, running_var_estimator="biased").to(device)
    unbiased = nn.BatchNorm1d(2, momentum=0.3).to(device)
    rm, rv, rv_unbiased = numpy.zeros(2), numpy.ones(2), numpy.ones(2)
    for x in batches:
        bn(t(x, device)), unbiased(t(x, device))
        mean, var, n = channel_stats64(x)
        rm = 0.7 * rm + 0.3 * mean
        rv = 0.7 * rv + 0.3 * var                        # Keras/Flax: the biased batch variance
        rv_unbiased = 0.7 * rv_unbiased + 0.3 * var * n / (n - 1)
    numpy.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-5)
    numpy.testing.assert_allclose(unbiased.running_var.numpy(), rv_unbiased, rtol=1e-5)


def test_biased_estimator_in_functional_and_instance_norm(device):
    x = rand((3, 2, 4, 5), loc=1.0, scale=2.0)
    rm, rv = to_dev(numpy.zeros(2, numpy.float32), device), to_dev(numpy.ones(2, numpy.float32), device)
    F.batch_norm(t(x, device), rm, rv, training=True, momentum=1.0, running_var_estimator="biased")
    numpy.testing.assert_allclose(backend.to_numpy(rv), channel_stats64(x)[1], rtol=1e-5)
    inorm = nn.InstanceNorm2d(2, track_running_stats=True, momentum=1.0, running_var_estimator="biased").to(device)
    inorm(t(x, device))
    per_instance = x.astype(numpy.float64).reshape(3, 2, -1).var(2)
    numpy.testing.assert_allclose(inorm.running_var.numpy(), per_instance.mean(0), rtol=1e-5)


# ---- nonfinite batches ------------------------------------------------------------------------
def nan_batch(seed=5):
    x = rand((4, 3, 2, 2), seed)
    x[1, 1, 0, 0] = numpy.nan
    return x


@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(3), lambda: nn.BatchNorm2d(3, momentum=None),
                                  lambda: nn.BatchRenorm2d(3),
                                  lambda: nn.InstanceNorm2d(3, track_running_stats=True)])
def test_skip_leaves_every_buffer_and_counts_the_batch(device, make):
    layer, clean = make().to(device), make().to(device)
    good = [rand((4, 3, 2, 2), seed, loc=1.0, scale=2.0) for seed in range(3)]
    layer(t(good[0], device)), clean(t(good[0], device))
    before = state(layer)
    assert int(before.pop("num_batches_skipped")) == 0
    y = layer(t(nan_batch(), device)).numpy()
    assert numpy.isnan(y[1, 1]).all() and numpy.isfinite(y[:, [0, 2]]).all()  # the output follows the math
    after = state(layer)
    assert int(after.pop("num_batches_skipped")) == 1
    assert_same_state(before, after)  # all channels untouched, num_batches_tracked not advanced
    x = rand((4, 3, 2, 2))
    x[0, 0, 0, 0] = numpy.inf
    layer(t(x, device))
    assert int(layer.num_batches_skipped.numpy()) == 2
    for g in good[1:]:  # later good batches update as if the bad ones never came
        layer(t(g, device)), clean(t(g, device))
    after, want = state(layer), state(clean)
    assert int(after.pop("num_batches_skipped")) == 2 and int(want.pop("num_batches_skipped")) == 0
    assert_same_state(want, after)


def test_raise_names_the_layer_and_changes_nothing(device):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, nonfinite="raise")).to(device)
    model(t(rand((6, 4)), device))
    before = state(model)
    x = rand((6, 4))
    x[2, 0] = numpy.nan
    with pytest.raises(FloatingPointError, match=r"BatchNorm1d\(3\): the batch statistics are NaN or Inf in "
                                                 r"channel\(s\) 0, 1, 2; the running statistics were left"):
        model(t(x, device))
    assert_same_state(before, state(model))
    nn.name_norm_layers(model)
    assert model[1].name == "1"
    with pytest.raises(FloatingPointError, match=r"BatchNorm1d\(3\) \(1\): "):
        model(t(x, device))
    bad = rand((4, 3, 2, 2))
    bad[:, 2] = numpy.inf
    with pytest.raises(FloatingPointError, match=r"batch_renorm: .* channel\(s\) 2;"):
        F.batch_renorm(t(bad, device), to_dev(numpy.zeros(3, numpy.float32), device),
                       to_dev(numpy.ones(3, numpy.float32), device), training=True, nonfinite="raise")


def test_functional_skip_and_propagate(device):
    x = t(nan_batch(), device)
    buffers = {p: (to_dev(numpy.zeros(3, numpy.float32), device), to_dev(numpy.ones(3, numpy.float32), device))
               for p in ("skip", "propagate")}
    for policy, (rm, rv) in buffers.items():
        F.batch_norm(x, rm, rv, training=True, nonfinite=policy)
    numpy.testing.assert_array_equal(backend.to_numpy(buffers["skip"][0]), 0)
    numpy.testing.assert_array_equal(backend.to_numpy(buffers["skip"][1]), 1)
    rm = backend.to_numpy(buffers["propagate"][0])
    assert numpy.isnan(rm[1]) and numpy.isfinite(rm[[0, 2]]).all()  # PyTorch: NaN poisons its channel


def test_no_stats_update_blocks_every_policy(device):
    bn = nn.BatchNorm2d(3, nonfinite="raise", momentum=None).to(device)
    brn = nn.BatchRenorm2d(3, nonfinite="skip").to(device)
    before = [state(bn), state(brn)]
    with F.no_stats_update():
        for layer in (bn, brn):
            layer(t(nan_batch(), device))           # neither raises nor counts
            layer(t(rand((4, 3, 2, 2), 1), device))  # a good batch changes nothing either
    assert_same_state(before[0], state(bn))
    assert_same_state(before[1], state(brn))


def test_skip_counter_is_an_optional_buffer(device):
    """num_batches_skipped travels in the state dict, and a PyTorch-shaped state (without it) loads strictly."""
    def make():
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(device)

    model = make()
    x = rand((6, 4))
    x[0, 0] = numpy.inf
    model(t(x, device))
    saved = model.state_dict()
    assert int(saved["1.num_batches_skipped"]) == 1 and saved["1.num_batches_skipped"].dtype == numpy.int64
    fresh = make()
    fresh.load_state_dict(saved)
    assert_same_state(state(model), state(fresh))
    pytorch_style = {k: v for k, v in saved.items() if k != "1.num_batches_skipped"}
    make().load_state_dict(pytorch_style)  # strict: the counter is optional and keeps its value
    with pytest.raises(ValueError, match="missing keys"):
        fresh.load_state_dict({k: v for k, v in saved.items() if k != "1.running_var"})
    model[1].reset_running_stats()
    assert int(model[1].num_batches_skipped.numpy()) == 0


# ---- degenerate batches --------------------------------------------------------------------------
def with_running_stats(layer, device):
    layer.running_mean.data[...] = to_dev(numpy.array([0.5, -1.0, 2.0], numpy.float32), device)
    spread = getattr(layer, layer.spread_buffer)
    spread.data[...] = to_dev(numpy.array([4.0, 0.25, 1.0], numpy.float32), device)
    layer.weight.data[...] = to_dev(numpy.array([1.5, 2.0, -1.0], numpy.float32), device)
    layer.bias.data[...] = to_dev(numpy.array([0.1, 0.2, 0.3], numpy.float32), device)
    return layer


def output_and_grads(layer, x, dy, device):
    """(y, dx, dweight, dbias) of one forward and backward with upstream ``dy``."""
    xt = t(x, device, requires_grad=True)
    layer.zero_grad()
    y = layer(xt)
    y.backward(to_dev(dy, device))
    return [backend.to_numpy(a).copy() for a in (y.data, xt.grad, layer.weight.grad, layer.bias.grad)]


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.BatchNorm1d(3, degenerate="use_running"), (1, 3)),
    (lambda: nn.BatchNorm2d(3, degenerate="use_running"), (1, 3, 1, 1)),
    (lambda: nn.BatchRenorm1d(3, degenerate="use_running"), (1, 3)),
    (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True, degenerate="use_running"), (2, 3, 1, 1)),
])
def test_use_running_is_the_eval_formula_and_updates_nothing(device, make, shape):
    layer = with_running_stats(make().to(device), device)
    x, dy = rand(shape, 1, scale=3.0), rand(shape, 2)
    before = state(layer)
    trained = output_and_grads(layer, x, dy, device)
    assert_same_state(before, state(layer))
    evaluated = output_and_grads(layer.eval(), x, dy, device)
    for a, b in zip(trained, evaluated, strict=True):
        numpy.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.BatchNorm1d(3, degenerate="skip_update"), (1, 3)),
    (lambda: nn.BatchRenorm1d(3, degenerate="skip_update", dmax=0.0), (1, 3)),
    (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True, degenerate="skip_update"), (2, 3, 1)),
    (lambda: nn.GroupNorm(3, 3, degenerate="skip_update"), (2, 3, 1, 1)),
])
def test_skip_update_normalizes_with_the_batch_and_updates_nothing(device, make, shape):
    layer = make().to(device)
    layer.bias.data[...] = to_dev(numpy.array([0.1, 0.2, 0.3], numpy.float32), device)
    before = state(layer)
    y = layer(t(rand(shape, 3), device)).numpy()
    # one value per statistic: x - mean = 0, so y = beta (Batch Renorm: + gamma * d, here dmax=0)
    numpy.testing.assert_array_equal(y, numpy.broadcast_to(layer.bias.numpy().reshape((1, 3) + (1,) * (len(shape) - 2)),
                                                           shape))
    assert_same_state(before, state(layer))


@pytest.mark.parametrize("call,match", [
    (lambda x: nn.BatchNorm1d(3)(x), r"BatchNorm1d\(3\): Expected more than 1 value per channel when training"),
    (lambda x: F.batch_norm(x, None, None, training=True, degenerate="use_running"),
     "batch_norm with degenerate='use_running' needs running_mean and running_var"),
    (lambda x: F.batch_norm(x, None, None, training=True, degenerate="sometimes"), "degenerate must be one of"),
])
def test_degenerate_errors(device, call, match):
    with pytest.raises(ValueError, match=match):
        call(t(rand((1, 3)), device))


def test_functional_degenerate_policies(device):
    x = t(rand((1, 3), 4), device)
    rm, rv = to_dev(numpy.full(3, 0.5, numpy.float32), device), to_dev(numpy.full(3, 4.0, numpy.float32), device)
    y = F.batch_norm(x, rm, rv, training=True, degenerate="use_running", eps=0.0).numpy()
    numpy.testing.assert_allclose(y, (x.numpy() - 0.5) / 2.0, rtol=1e-6)
    y = F.batch_norm(x, rm, rv, training=True, degenerate="skip_update").numpy()
    numpy.testing.assert_array_equal(y, 0)
    numpy.testing.assert_array_equal(backend.to_numpy(rm), 0.5)
    numpy.testing.assert_array_equal(backend.to_numpy(rv), 4.0)


# ---- frozen statistics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: nn.BatchNorm2d(3), lambda: nn.BatchRenorm2d(3),
                                  lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True)])
def test_frozen_layer_in_train_mode_is_the_eval_layer(device, make):
    layer = with_running_stats(make().to(device), device)
    assert layer.freeze_stats() is layer and layer.training
    assert "frozen_stats=True" in repr(layer) and "frozen" not in " ".join(layer.state_dict())
    x, dy = rand((4, 3, 2, 2), 1, loc=3.0, scale=2.0), rand((4, 3, 2, 2), 2)
    before = state(layer)
    frozen = output_and_grads(layer, x, dy, device)
    assert_same_state(before, state(layer))                      # never updated in train mode
    assert all(g is not None for g in frozen[1:])                 # x, gamma and beta get gradients
    evaluated = output_and_grads(layer.eval(), x, dy, device)
    for a, b in zip(frozen, evaluated, strict=True):
        numpy.testing.assert_array_equal(a, b)
    layer.train().unfreeze_stats()
    assert "frozen" not in repr(layer)
    layer(t(x, device))
    assert int(layer.num_batches_tracked.numpy()) == 1


def test_freeze_batchnorm_walks_a_model():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(nn.BatchRenorm2d(3), nn.GroupNorm(1, 3)),
                          nn.InstanceNorm2d(3), nn.InstanceNorm2d(3, track_running_stats=True))
    assert nn.freeze_batchnorm(model) is model
    assert [getattr(m, "frozen_stats", None) for m in model.modules()] == [None, True, None, True, None, False, True]
    assert nn.unfreeze_batchnorm(model) is model
    assert not any(getattr(m, "frozen_stats", False) for m in model.modules())
    with pytest.raises(ValueError, match=r"InstanceNorm2d\(3\) has no running statistics to freeze"):
        nn.InstanceNorm2d(3).freeze_stats()


# ---- Batch Renorm schedule in the state dict ----------------------------------------------------
def brn_batches(n):
    return [rand((4, 3, 2, 2), seed, loc=3.0 * math.sin(seed), scale=1.0 + seed % 3) for seed in range(n)]


def run_brn(layer, batches, device):
    outs = []
    for x in batches:
        xt = t(x, device, requires_grad=True)
        y = layer(xt)
        y.backward(to_dev(rand(x.shape, 99), device))
        outs.append((y.numpy().copy(), backend.to_numpy(xt.grad).copy()))
    return outs


def test_batch_renorm_resume_continues_the_saved_schedule_bitwise(device):
    batches = brn_batches(9)
    schedule = dict(rmax=2.0, dmax=1.5, warmup_steps=2, ramp_steps=4, momentum=0.2)
    whole = nn.BatchRenorm2d(3, **schedule).to(device)
    expected = run_brn(whole, batches, device)
    first = nn.BatchRenorm2d(3, **schedule).to(device)
    run_brn(first, batches[:3], device)
    saved = first.state_dict()
    numpy.testing.assert_array_equal(saved["renorm_schedule"], [2.0, 1.5, 2, 4])
    # built with the default schedule (momentum is not state, as in PyTorch): the state decides
    resumed = nn.BatchRenorm2d(3, momentum=0.2).to(device)
    resumed.load_state_dict(saved)
    assert (resumed.rmax, resumed.dmax, resumed.warmup_steps, resumed.ramp_steps) == (2.0, 1.5, 2, 4)
    got = run_brn(resumed, batches[3:], device)
    for (y, g), (y_ref, g_ref) in zip(got, expected[3:], strict=True):
        assert y.tobytes() == y_ref.tobytes() and g.tobytes() == g_ref.tobytes()
    assert_same_state(state(whole), state(resumed))


def test_batch_renorm_callable_limits(device):
    def rmax(step):
        return 1.0 + 0.25 * step

    def dmax(step):
        return min(0.5 * step, 2.0)

    layer = nn.BatchRenorm2d(3, rmax=rmax, dmax=dmax, warmup_steps=100).to(device)  # warm-up ignored
    assert layer.limits(0) == (1.0, 0.0) and layer.limits(8) == (3.0, 2.0)
    assert layer.rmax is rmax and "rmax=rmax" in repr(layer)
    x = rand((4, 3, 2, 2), 1, loc=2.0)
    for _ in range(3):
        layer(t(x, device))
    rm, rs = layer.running_mean.data.copy(), layer.running_std.data.copy()
    y = layer(t(x, device)).numpy()
    expect = F.batch_renorm(t(x, device), rm, rs, layer.weight, layer.bias, training=True, rmax=1.75, dmax=1.5,
                            momentum=0.0).numpy()
    assert y.tobytes() == expect.tobytes()

    saved = layer.state_dict()
    assert numpy.isnan(saved["renorm_schedule"][:2]).all()  # callables are not saved
    numeric = nn.BatchRenorm2d(3).to(device)
    numeric.load_state_dict(saved)
    with pytest.raises(ValueError, match="rmax was a callable in the state this layer loaded"):
        numeric(t(x, device))
    again = nn.BatchRenorm2d(3, rmax=rmax, dmax=dmax).to(device)
    again.load_state_dict(saved)
    assert again.limits() == layer.limits() == (2.0, 2.0)
    again.load_state_dict(nn.BatchRenorm2d(3, rmax=1.5, dmax=0.5).state_dict())  # numbers win over callables
    assert again.limits() == (1.5, 0.5)
    bad = nn.BatchRenorm2d(3, rmax=lambda step: 0.5).to(device)
    with pytest.raises(ValueError, match=r"rmax\(step=0\) returned 0.5; rmax must be a finite number >= 1"):
        bad(t(x, device))
