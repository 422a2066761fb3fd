"""recalibrate_bn, bn_report and fold_bn."""
import copy

import numpy
import pytest

import cubn
from cubn import nn, random
from cubn.nn.module import Module


def rand(shape, seed=0, loc=0.0, scale=1.0, dtype=numpy.float32):
    return (loc + scale * numpy.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def scramble_stats(model, seed=0):
    """Give every BatchNorm layer arbitrary running statistics and affine parameters."""
    rng = numpy.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            C = m.num_features
            m.running_mean.data[...] = rng.standard_normal(C)
            m.running_var.data[...] = rng.uniform(0.5, 2.0, C)
            m.num_batches_tracked.data[...] = 5
            if m.affine:
                m.weight.data[...] = rng.uniform(0.5, 1.5, C)
                m.bias.data[...] = rng.standard_normal(C)
    return model


def snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ---- recalibrate_bn -----------------------------------------------------------------------
def small_cnn():
    cubn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(4, 5, 1), nn.GhostBatchNorm2d(5, 3), nn.Flatten(), nn.Linear(5 * 4, 6),
                         nn.BatchNorm1d(6)).double()


def reference_stats(model, batches):
    """float64 reference: run each batch with BatchNorm layers normalizing by their batch statistics
    (numpy, per virtual batch for the ghost layer), Dropout off; concatenate each BatchNorm layer's
    inputs over all batches and take mean and unbiased variance."""
    inputs = {}
    for x in batches:
        h = x
        for name, layer in model.named_children():
            if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                inputs.setdefault(name, []).append(h)
                v = getattr(layer, "virtual_batch_size", len(h))
                out = []
                for s in range(0, len(h), v):
                    c = h[s:s + v]
                    axes = (0,) + tuple(range(2, c.ndim))
                    shape = (1, -1) + (1,) * (c.ndim - 2)
                    mu, var = c.mean(axis=axes, keepdims=True), c.var(axis=axes, keepdims=True)
                    out.append((c - mu) / numpy.sqrt(var + layer.eps) * layer.weight.numpy().reshape(shape)
                               + layer.bias.numpy().reshape(shape))
                h = numpy.concatenate(out)
            else:
                with cubn.no_grad():
                    h = layer.eval()(cubn.tensor(h)).numpy()
    stats = {}
    for name, xs in inputs.items():
        flat = numpy.moveaxis(numpy.concatenate(xs), 1, 0).reshape(xs[0].shape[1], -1)
        stats[name] = flat.mean(1), flat.var(1, ddof=1), flat.var(1)
    return stats


def test_recalibrate_matches_concatenated_float64_reference_and_changes_nothing_else():
    model = scramble_stats(small_cnn())
    model.train()
    model[4].eval()  # a mixed mode setting, to be restored as it was
    batches = [rand((n, 3, 4, 4), seed=n, loc=1.0, scale=2.0, dtype=numpy.float64) for n in (5, 7, 4)]
    expected = reference_stats(copy.deepcopy(model), batches)
    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    rng_state = random.get_rng().bit_generator.state
    given = [batches[0], cubn.tensor(batches[1]), (batches[2], numpy.zeros(4, numpy.int64))]
    drift = nn.recalibrate_bn(model, iter(given))  # one pass: an iterator is enough

    assert set(drift) == {"1", "5", "8"}
    for name, (mean, var, _) in expected.items():
        layer = model._modules[name]
        numpy.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-10)
        old_mean, old_var = before[f"{name}.running_mean"], before[f"{name}.running_var"]
        d = drift[name]
        assert d["count"] == 16 * {"1": 4, "5": 4, "8": 1}[name]  # 16 samples x spatial positions
        assert d["mean_shift"] == pytest.approx(numpy.max(numpy.abs(old_mean - mean) / numpy.sqrt(var + 1e-5)))
        ratio = (old_var + 1e-5) / (var + 1e-5)
        assert d["var_ratio_max"] == pytest.approx(ratio.max()) and d["var_ratio_min"] == pytest.approx(ratio.min())
    after = snapshot(model)
    for key, value in before.items():
        if not key.endswith(("running_mean", "running_var")):
            numpy.testing.assert_array_equal(after[key], value, err_msg=key)  # incl. num_batches_tracked
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert random.get_rng().bit_generator.state == rng_state  # Dropout was off: nothing drawn
    assert "forward" not in model[1].__dict__


def test_recalibrate_biased_estimator_frozen_and_untracked_layers():
    cubn.manual_seed(1)
    biased, frozen, free = nn.BatchNorm1d(3), nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False)
    biased.running_var_estimator = "biased"
    frozen.running_mean.data[...] = 7.0
    frozen.freeze_stats()
    model = nn.Sequential(nn.Linear(2, 3), biased, frozen, free).double()
    batches = [rand((6, 2), seed=s, dtype=numpy.float64) for s in range(2)]
    drift = nn.recalibrate_bn(model, batches)
    assert set(drift) == {"1"}
    with cubn.no_grad():
        h = numpy.concatenate([model[0](cubn.tensor(b)).numpy() for b in batches])
    numpy.testing.assert_allclose(biased.running_var.numpy(), h.var(0), rtol=1e-10)
    numpy.testing.assert_array_equal(frozen.running_mean.numpy(), 7.0)


def test_recalibrate_reports_unreached_layers_and_rejects_empty_input():
    class TwoBranches(Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(2), nn.BatchNorm1d(2)

        def forward(self, x):
            return self.used(x)

    model = TwoBranches()
    drift = nn.recalibrate_bn(model, [rand((4, 2))])
    assert drift["unused"] == {"count": 0, "mean_shift": None, "var_ratio_max": None, "var_ratio_min": None}
    assert drift["used"]["count"] == 4
    numpy.testing.assert_array_equal(model.unused.running_var.numpy(), 1.0)
    bad, before = rand((4, 2)), snapshot(model)
    bad[0, 1] = numpy.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        nn.recalibrate_bn(model, [rand((4, 2), seed=1), bad])
    for key, value in snapshot(model).items():
        numpy.testing.assert_array_equal(value, before[key])
    with pytest.raises(ValueError, match="batches was empty"):
        nn.recalibrate_bn(model, [])
    with pytest.raises(TypeError, match="Module"):
        nn.recalibrate_bn(lambda x: x, [rand((4, 2))])


def test_recalibrate_restores_modes_after_an_error():
    model = nn.Sequential(nn.BatchNorm1d(2)).eval()
    with pytest.raises(ValueError, match="more than 1"):
        nn.recalibrate_bn(model, [rand((1, 2))])
    assert not model.training and not model[0].training and "forward" not in model[0].__dict__


# ---- bn_report ----------------------------------------------------------------------------
def test_bn_report_values_flags_and_table():
    bn = nn.BatchNorm1d(3)
    fresh = nn.BatchNorm1d(2)
    model = nn.Sequential(bn, nn.Linear(3, 2), fresh)
    bn.running_mean.data[...] = [0.0, 0.0, 5.0]
    bn.running_var.data[...] = [1.0, 1.0, 1.0]
    bn.num_batches_tracked.data[...] = 10
    x = rand((64, 3), seed=3)
    x = (x - x.mean(0)) / x.std(0, ddof=1)  # exactly mean 0, unbiased variance 1 per channel
    x[:, 1] *= 3.0                           # channel 1: variance 9
    model.train()
    before, rng_state = snapshot(model), random.get_rng().bit_generator.state
    report = nn.bn_report(model, (x, None))

    assert len(report.rows) == 5
    rows = {(r["layer"], r["channel"]): r for r in report.rows}
    assert rows[("0", 0)]["flags"] == []
    assert rows[("0", 1)]["flags"] == ["large train/eval gap"]
    assert rows[("0", 1)]["var_ratio"] == pytest.approx(9.0, rel=1e-5)
    assert rows[("0", 2)]["flags"] == ["large train/eval gap"]
    assert rows[("0", 2)]["mean_gap"] == pytest.approx(5 / numpy.sqrt(1 + 1e-5), rel=1e-5)
    assert rows[("0", 2)]["batch_mean"] == pytest.approx(0.0, abs=1e-6)
    assert rows[("2", 0)]["flags"][:2] == ["never updated", "running stats at init"]
    # the input of layer "2" is what eval mode gives: Linear applied to bn's eval output
    with cubn.no_grad():
        h = model[1](model[0].eval()(cubn.tensor(x))).numpy().astype(numpy.float64)
    model.train()
    assert rows[("2", 1)]["batch_var"] == pytest.approx(h[:, 1].var(ddof=1), rel=1e-5)
    assert [r["layer"] for r in report.flagged] == ["0", "0", "2", "2"]

    text = str(report).splitlines()
    assert text[0].split() == list(nn.BNReport.columns)
    assert set(text[1]) <= {"-", " "} and len(text) == len(report.rows) + 3
    assert "2 BatchNorm layer(s), 2 flagged" in text[-1]
    header_end = text[0].index("running_var") + len("running_var")
    assert all(line[header_end - 1] != " " for line in text[2:-1])  # numbers right-aligned under the header

    after = snapshot(model)
    for key, value in before.items():
        numpy.testing.assert_array_equal(after[key], value, err_msg=key)
    assert all(m.training for m in model.modules())
    assert random.get_rng().bit_generator.state == rng_state


def test_bn_report_threshold_and_single_value_channels():
    bn = nn.BatchNorm2d(2)
    bn.num_batches_tracked.data[...] = 1
    report = nn.bn_report(bn, rand((1, 2, 1, 1)), threshold=100.0)
    assert all(numpy.isnan(r["batch_var"]) for r in report.rows)
    assert all("large train/eval gap" not in r["flags"] for r in report.rows)
    assert report.rows[0]["layer"] == "BatchNorm2d"
    with pytest.raises(ValueError, match="threshold"):
        nn.bn_report(bn, rand((2, 2, 1, 1)), threshold=1.0)


# ---- fold_bn ------------------------------------------------------------------------------
def outputs(model, x):
    with cubn.no_grad():
        return model.eval()(cubn.tensor(x)).numpy()


def shared(a, b):
    return numpy.shares_memory(a.data, b.data)


def test_fold_into_previous_conv_and_linear_is_exact():
    cubn.manual_seed(2)
    model = scramble_stats(nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4, affine=False)),
        nn.Flatten(), nn.Linear(4 * 16, 5), nn.BatchNorm1d(5)))
    x = rand((3, 4, 9, 9), seed=1)
    before, expected = snapshot(model), outputs(model, x)
    model.train()
    folded = nn.fold_bn(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3][1], nn.Identity)
    assert isinstance(folded[6], nn.Identity) and folded[0].bias is not None
    assert not folded.training
    numpy.testing.assert_allclose(outputs(folded, x), expected, rtol=1e-5, atol=1e-5)
    # the original is untouched and shares no array with the copy
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].bias is None and model.training
    for key, value in snapshot(model).items():
        numpy.testing.assert_array_equal(value, before[key])
    assert not any(shared(p, q) for p in model.parameters() for q in folded.parameters())


def test_fold_into_next_through_dropout_and_identity():
    cubn.manual_seed(3)
    model = scramble_stats(nn.Sequential(
        nn.BatchNorm2d(4), nn.Dropout(0.3), nn.Identity(), nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.ReLU(),
        nn.BatchNorm2d(6), nn.Conv2d(6, 3, 2, dilation=2, bias=False), nn.Flatten(),
        nn.BatchNorm1d(3 * 2 * 2), nn.Linear(12, 5)), seed=4)
    x = rand((2, 4, 9, 9), seed=2)
    expected = outputs(model, x)
    folded = nn.fold_bn(model, into="next")
    assert [type(m).__name__ for m in folded][::4] == ["Identity", "ReLU", "Identity"]
    assert isinstance(folded[5], nn.Identity) and folded[6].bias is not None
    numpy.testing.assert_allclose(outputs(folded, x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(model[0], nn.BatchNorm2d)


def test_fold_next_refuses_padding_unless_allowed_and_skips_what_cannot_fold():
    model = scramble_stats(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3, padding=1)))
    with pytest.raises(ValueError, match="padding"):
        nn.fold_bn(model, into="next")
    x = rand((2, 3, 6, 6), seed=5)
    inexact = outputs(nn.fold_bn(model, into="next", allow_inexact_padding=True), x)
    exact = outputs(model, x)
    numpy.testing.assert_allclose(inexact[:, :, 1:-1, 1:-1], exact[:, :, 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert not numpy.allclose(inexact, exact, atol=1e-3)  # the borders differ, as documented
    # a BatchNorm without running statistics, or with no Conv/Linear neighbour, stays
    keep = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2, track_running_stats=False), nn.ReLU(),
                         nn.BatchNorm2d(2))
    folded = nn.fold_bn(keep)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "BatchNorm2d", "ReLU", "BatchNorm2d"]
    with pytest.raises(ValueError, match="into"):
        nn.fold_bn(keep, into="both")


def test_fold_walks_sequentials_inside_custom_modules_and_deepcopy_is_independent():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(12, 2), nn.BatchNorm1d(2))

        def forward(self, x):
            return self.head(self.features(x))

    net = scramble_stats(Net())
    x = rand((4, 2, 2, 2), seed=6)
    expected = outputs(net, x)
    folded = nn.fold_bn(net)
    assert isinstance(folded.features[1], nn.Identity) and isinstance(folded.head[2], nn.Identity)
    numpy.testing.assert_allclose(outputs(folded, x), expected, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(net)  # the copy fold_bn makes: equal values, separate arrays
    for (k, a), (_, b) in zip(net.state_dict().items(), twin.state_dict().items()):
        numpy.testing.assert_array_equal(a, b)
    assert not any(shared(p, q) for p in net.parameters() for q in twin.parameters())


def test_recalibrate_counts_only_unmasked_values():
    class Masked(Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def forward(self, batch):
            x, mask = batch[:, :2], batch[:, 2].data > 0  # (N, 2, L) values and an (N, L) mask
            return self.bn(x, mask=mask)

    model = Masked()
    batches = [rand((4, 3, 5), seed=s, dtype=numpy.float64) for s in (1, 2)]
    drift = nn.recalibrate_bn(model, [cubn.tensor(b) for b in batches])
    values = numpy.concatenate([numpy.moveaxis(b[:, :2], 1, 0)[:, b[:, 2] > 0] for b in batches], axis=1)
    assert drift["bn"]["count"] == values.shape[1]
    numpy.testing.assert_allclose(model.bn.running_mean.numpy(), values.mean(1), rtol=1e-6)
    numpy.testing.assert_allclose(model.bn.running_var.numpy(), values.var(1, ddof=1), rtol=1e-6)
