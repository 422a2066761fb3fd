"""BatchNorm state to and from PyTorch, Keras 3 and Flax.

Each framework's train step is simulated here in float64 NumPy from its documented update rule;
an imported layer must reproduce the eval output at once and the running statistics after
three training steps.
"""
import numpy
import pytest

import cubn
from cubn import nn

HAS_ESTIMATOR = hasattr(nn.BatchNorm2d(2), "running_var_estimator")
needs_estimator = pytest.mark.skipif(
    not HAS_ESTIMATOR, reason="BatchNorm has no running_var_estimator attribute yet (biased running variance "
                              "for Keras/Flax training lands with it); running when hasattr(BatchNorm2d(2), "
                              "'running_var_estimator')")


def f32(a):
    """Values exactly representable in float32 (imports store float32), as float64."""
    return numpy.asarray(a, numpy.float32).astype(numpy.float64)


def rand(shape, seed, loc=0.0, scale=1.0):
    return f32(loc + scale * numpy.random.default_rng(seed).standard_normal(shape))


def per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_moments(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)  # biased


def normalize(x, mean, var, gamma, beta, eps):
    n = x.ndim
    return (x - per_channel(mean, n)) / numpy.sqrt(per_channel(var, n) + eps) * per_channel(gamma, n) \
        + per_channel(beta, n)


def simulate(x_steps, gamma, beta, mean, var, eps, rule):
    """Train steps of one framework in float64; returns (outputs, mean, var) after the steps.

    rule "decay m": moving = moving * m + batch * (1 - m), biased variance (Keras, Flax);
    rule "torch m": running = (1 - m) * running + m * batch, unbiased variance (PyTorch).
    """
    kind, m = rule
    outs = []
    for x in x_steps:
        bm, bv = batch_moments(x)
        outs.append(normalize(x, bm, bv, gamma, beta, eps))
        if kind == "decay":
            mean, var = mean * m + bm * (1 - m), var * m + bv * (1 - m)
        else:
            n = x.size // x.shape[1]
            mean, var = (1 - m) * mean + m * bm, (1 - m) * var + m * bv * n / (n - 1)
    return outs, mean, var


def train_steps(layer, x_steps):
    layer.train()
    return [layer(cubn.tensor(x)).numpy() for x in x_steps]


def steps(shape, seeds=(11, 12, 13)):
    return [rand(shape, s, loc=1.5, scale=2.0) for s in seeds]


# ---- PyTorch ------------------------------------------------------------------------------
def torch_state(C, seed=0):
    return {"weight": rand(C, seed, 1.0, 0.3), "bias": rand(C, seed + 1), "running_mean": rand(C, seed + 2),
                "running_var": f32(rand(C, seed + 3) ** 2 + 0.5), "num_batches_tracked": numpy.array(7, numpy.int64)}


def test_torch_state_dict_eval_and_three_training_steps_follow_pytorch_rule():
    state = torch_state(3)
    layer = nn.BatchNorm2d(3, momentum=0.2)
    assert nn.from_torch_state_dict(layer, state).layers == [""]
    layer.double()
    x = rand((4, 3, 2, 3), 5)
    expected = normalize(x, state["running_mean"], state["running_var"], state["weight"], state["bias"], 1e-5)
    numpy.testing.assert_allclose(layer.eval()(cubn.tensor(x)).numpy(), expected, rtol=1e-12, atol=1e-12)
    xs = steps((4, 3, 2, 3))
    outs, mean, var = simulate(xs, state["weight"], state["bias"], state["running_mean"], state["running_var"],
                               1e-5, ("torch", 0.2))
    for got, want in zip(train_steps(layer, xs), outs):
        numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
    numpy.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    assert int(layer.num_batches_tracked.numpy()) == 10


def test_torch_state_dict_round_trip_on_a_model_with_prefix():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)))
    model.train()
    model(cubn.tensor(rand((5, 2, 2, 2), 1).astype(numpy.float32)))
    exported = nn.to_torch_state_dict(model, prefix="module.")
    assert list(exported) == [f"module.{p}.{k}" for p in ("1", "2.1") for k in
                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    assert all(isinstance(v, numpy.ndarray) for v in exported.values())
    assert exported["module.1.num_batches_tracked"].dtype == numpy.int64
    other = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)))
    exported["module.0.weight"] = numpy.zeros(7)
    with pytest.raises(ValueError, match=r"module.0.weight has shape \(7,\), expected \(3, 2, 1, 1\)"):
        nn.from_torch_state_dict(other, exported, prefix="module.")        # the whole model loads by default
    result = nn.from_torch_state_dict(other, exported, prefix="module.", bn_only=True)
    assert result.layers == ["1", "2.1"] and result.skipped == ["module.0.weight"]   # said, not silent
    for key in ("1.running_var", "2.1.running_mean", "2.1.num_batches_tracked", "1.weight"):
        numpy.testing.assert_array_equal(other.state_dict()[key], model.state_dict()[key])
    assert not numpy.array_equal(other.state_dict()["0.weight"], 0)


def test_torch_state_dict_loads_the_whole_model_and_names_what_it_skipped():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    source = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    state = {k: v for k, v in source.state_dict().items() if k != "1.num_batches_skipped"}
    state["5.weight"] = numpy.zeros(2)                     # a layer the cubn model lacks
    result = nn.from_torch_state_dict(model, state)
    assert result.layers == ["1"] and result.skipped == ["5.weight"]
    assert set(result.loaded) == set(state) - {"5.weight"}
    for key in ("0.weight", "0.bias", "3.weight", "1.running_var"):
        numpy.testing.assert_array_equal(model.state_dict()[key], source.state_dict()[key])


def test_torch_state_dict_errors_change_nothing():
    layer = nn.BatchNorm1d(3)
    before = layer.state_dict()
    state = torch_state(3)
    with pytest.raises(ValueError, match="missing key running_var"):
        nn.from_torch_state_dict(layer, {k: v for k, v in state.items() if k != "running_var"})
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(3,\)"):
        nn.from_torch_state_dict(layer, {**state, "bias": numpy.zeros(4)})
    with pytest.raises(ValueError, match="NaN"):
        nn.from_torch_state_dict(layer, {**state, "running_mean": numpy.array([0, numpy.nan, 0])})
    with pytest.raises(ValueError, match="affine=False"):
        nn.from_torch_state_dict(nn.BatchNorm1d(3, affine=False), state)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        nn.from_torch_state_dict(nn.Linear(2, 2), state, bn_only=True)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(2, 2\)"):
        nn.from_torch_state_dict(nn.Linear(2, 2), state)
    for key, value in layer.state_dict().items():
        numpy.testing.assert_array_equal(value, before[key])
    del state["num_batches_tracked"]  # optional: old PyTorch checkpoints lack it
    nn.from_torch_state_dict(layer, state)
    assert int(layer.num_batches_tracked.numpy()) == 0


def test_pytorch_parity_eval_and_training():
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 1.5)
        tbn.bias.normal_()
    for x in steps((4, 3, 2, 2)):
        tbn(torch.from_numpy(x))
    layer = nn.BatchNorm2d(3, momentum=0.3)
    nn.from_torch_state_dict(layer, tbn.state_dict())  # torch tensors, one requiring grad
    layer.double()
    tbn.eval()
    x = rand((5, 3, 2, 2), 3)
    numpy.testing.assert_allclose(layer.eval()(cubn.tensor(x)).numpy(), tbn(torch.from_numpy(x)).detach().numpy(),
                                  rtol=1e-6, atol=1e-6)  # state passed through float32
    tbn.train()
    layer.train()
    back = {k: torch.from_numpy(v) for k, v in nn.to_torch_state_dict(layer).items()}
    tbn.load_state_dict(back)
    for x in steps((4, 3, 2, 2), seeds=(21, 22, 23)):
        tbn(torch.from_numpy(x))
        layer(cubn.tensor(x))
    numpy.testing.assert_allclose(layer.running_var.numpy(), tbn.running_var.numpy(), rtol=1e-12)
    assert int(layer.num_batches_tracked.numpy()) == int(tbn.num_batches_tracked)


def assert_follows_simulation(layer, x, params, eps, xs, outs, mean):
    """Eval output on ``x`` from the imported statistics, then training outputs and running mean as simulated."""
    gamma, beta, mean0, var0 = params
    numpy.testing.assert_allclose(layer.eval()(cubn.tensor(x)).numpy(), normalize(x, mean0, var0, gamma, beta, eps),
                                  rtol=1e-12, atol=1e-12)
    for got, want in zip(train_steps(layer, xs), outs):
        numpy.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)


# ---- Keras 3 ------------------------------------------------------------------------------
def keras_weights(C, seed=0):
    return [rand(C, seed, 1.0, 0.3), rand(C, seed + 1), rand(C, seed + 2), f32(rand(C, seed + 3) ** 2 + 0.5)]


def keras_layer_and_simulation(dims=2, config=None):
    weights = keras_weights(4)
    config = {"name": "batch_normalization", "axis": -1, "momentum": 0.9, "epsilon": 1e-3, "center": True,
              "scale": True, "synchronized": False, **(config or {})}
    layer = nn.batchnorm_from_keras(weights, config, dims=dims).double()
    shape = {1: (6, 4), 2: (3, 4, 2, 2), 3: (2, 4, 2, 1, 2)}[dims]
    xs = steps(shape)
    gamma, beta, mean, var = weights
    outs, mean, var = simulate(xs, gamma, beta, mean, var, config["epsilon"], ("decay", config["momentum"]))
    return layer, weights, xs, outs, mean, var


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_keras_eval_output_and_training_means(dims):
    layer, params, xs, outs, mean, _ = keras_layer_and_simulation(dims)
    assert type(layer) is {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    assert layer.eps == 1e-3
    numpy.testing.assert_allclose(layer.momentum, 0.1, rtol=1e-12)
    assert_follows_simulation(layer, xs[0] - 0.7, params, 1e-3, xs, outs, mean)


@needs_estimator
def test_keras_training_moves_the_variance_like_keras():
    layer, _, xs, _, _, var = keras_layer_and_simulation()
    assert layer.running_var_estimator == "biased"
    train_steps(layer, xs)
    numpy.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)


def test_keras_defaults_round_trip_and_missing_scale():
    weights = keras_weights(3)
    layer = nn.batchnorm_from_keras(weights, {})  # Keras defaults: epsilon 1e-3, momentum 0.99
    assert layer.eps == 1e-3 and abs(layer.momentum - 0.01) < 1e-15
    back, config = nn.batchnorm_to_keras(layer)
    assert config == {"axis": -1, "momentum": pytest.approx(0.99, abs=1e-15), "epsilon": 1e-3,
                      "center": True, "scale": True}
    for got, want in zip(back, weights):
        assert got.dtype == numpy.float32
        numpy.testing.assert_array_equal(got, want)

    no_scale = nn.batchnorm_from_keras(weights[1:], {"scale": False, "axis": [3]})
    assert no_scale.affine and not no_scale.weight.requires_grad
    numpy.testing.assert_array_equal(no_scale.weight.numpy(), 1)
    x = cubn.tensor(rand((4, 3, 2, 2), 2).astype(numpy.float32))
    no_scale.train()(x).sum().backward()
    assert no_scale.weight.grad is None and no_scale.bias.grad is not None
    back, config = nn.batchnorm_to_keras(no_scale)
    assert len(back) == 3 and config["scale"] is False and config["center"] is True

    plain = nn.batchnorm_from_keras(weights[2:], {"scale": False, "center": False})
    assert not plain.affine
    assert nn.batchnorm_to_keras(plain)[1]["scale"] is False


def test_keras_errors():
    weights = keras_weights(3)
    with pytest.raises(ValueError, match=r"4 arrays\), got 3"):
        nn.batchnorm_from_keras(weights[:3], {})
    with pytest.raises(ValueError, match=r"moving_variance must have shape \(3,\)"):
        nn.batchnorm_from_keras(weights[:3] + [numpy.ones(2)], {})
    with pytest.raises(ValueError, match="moving_variance must be >= 0"):
        nn.batchnorm_from_keras(weights[:3] + [-numpy.ones(3)], {})
    with pytest.raises(ValueError, match="several axes"):
        nn.batchnorm_from_keras(weights, {"axis": [1, 2]})
    with pytest.raises(ValueError, match="momentum"):
        nn.batchnorm_from_keras(weights, {"momentum": 1.5})
    with pytest.raises(ValueError, match="renorm"):
        nn.batchnorm_from_keras(weights, {"renorm": True})
    with pytest.raises(ValueError, match="dims"):
        nn.batchnorm_from_keras(weights, {}, dims=4)
    with pytest.raises(ValueError, match="momentum=None"):
        nn.batchnorm_to_keras(nn.BatchNorm2d(3, momentum=None))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        nn.batchnorm_to_keras(nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(TypeError, match="BatchNorm"):
        nn.batchnorm_to_keras(nn.Linear(2, 2))


# ---- Flax linen ---------------------------------------------------------------------------
def flax_layer_and_simulation(momentum=0.8, epsilon=1e-5):
    scale, bias, mean, var = keras_weights(3, seed=4)
    params, batch_stats = {"scale": scale, "bias": bias}, {"mean": mean, "var": var}
    layer = nn.batchnorm_from_flax(params, batch_stats, momentum=momentum, epsilon=epsilon).double()
    xs = steps((3, 3, 2, 3))
    outs, m, v = simulate(xs, scale, bias, mean, var, epsilon, ("decay", momentum))
    return layer, (scale, bias, mean, var), xs, outs, m, v


def test_flax_eval_output_and_training_means():
    layer, params, xs, outs, mean, _ = flax_layer_and_simulation()
    assert layer.eps == 1e-5
    assert_follows_simulation(layer, xs[1] * 0.5, params, 1e-5, xs, outs, mean)


@needs_estimator
def test_flax_training_moves_the_variance_like_flax():
    layer, _, xs, _, _, var = flax_layer_and_simulation()
    train_steps(layer, xs)
    numpy.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)


def test_flax_round_trip_defaults_and_errors():
    scale, bias, mean, var = keras_weights(2)
    with pytest.raises(ValueError, match="momentum and epsilon must be given: they are arguments of the Flax"):
        nn.batchnorm_from_flax({"bias": bias}, {"mean": mean, "var": var})
    with pytest.raises(ValueError, match="epsilon must be given"):
        nn.batchnorm_from_flax({"bias": bias}, {"mean": mean, "var": var}, momentum=0.99)
    layer = nn.batchnorm_from_flax({"bias": bias}, {"mean": mean, "var": var}, momentum=0.99, epsilon=1e-5)
    assert abs(layer.momentum - 0.01) < 1e-15 and layer.eps == 1e-5 and not layer.weight.requires_grad
    params, stats, config = nn.batchnorm_to_flax(layer)
    assert set(params) == {"bias"} and config["use_scale"] is False and config["use_bias"] is True
    assert config["momentum"] == pytest.approx(0.99, abs=1e-15) and config["epsilon"] == 1e-5
    numpy.testing.assert_array_equal(stats["var"], var)
    numpy.testing.assert_array_equal(params["bias"], bias)
    with pytest.raises(ValueError, match="unexpected keys"):
        nn.batchnorm_from_flax({"params": {"scale": scale}}, {"mean": mean, "var": var}, momentum=0.9, epsilon=1e-5)
    with pytest.raises(ValueError, match=r"missing \['var'\]"):
        nn.batchnorm_from_flax({}, {"mean": mean}, momentum=0.9, epsilon=1e-5)
    with pytest.raises(ValueError, match=r"params\['scale'\] must have shape \(2,\)"):
        nn.batchnorm_from_flax({"scale": numpy.ones(3)}, {"mean": mean, "var": var}, momentum=0.9, epsilon=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        nn.batchnorm_from_flax({}, {"mean": mean, "var": var}, momentum=0.9, epsilon=-1)


def test_keras_trainable_false_gives_frozen_statistics_and_weights():
    weights = keras_weights(3)
    layer = nn.batchnorm_from_keras(weights, {"trainable": False})
    assert layer.frozen_stats and not any(p.requires_grad for p in layer.parameters())
    before = layer.running_mean.numpy().copy()
    layer.train()(cubn.tensor(rand((4, 3, 2, 2), 2).astype(numpy.float32)))
    numpy.testing.assert_array_equal(layer.running_mean.numpy(), before)      # Keras: inference mode when frozen
    assert not nn.batchnorm_from_keras(weights, {"trainable": True}).frozen_stats
