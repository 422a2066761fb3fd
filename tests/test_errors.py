"""Bad input gets a clear ValueError/TypeError naming the argument, before anything is computed."""
import numpy
import pytest

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from conftest import to_dev


def x4(device, shape=(2, 3, 4, 4), dtype=numpy.float32):
    return cubn.tensor(to_dev(numpy.random.default_rng(0).standard_normal(shape).astype(dtype), device))


def vec(n, device, fill=1.0):
    return to_dev(numpy.full(n, fill, numpy.float32), device)


@pytest.mark.parametrize("call,match", [
    (lambda x, d: F.batch_norm(x, vec(4, d), vec(3, d)), r"running_mean must have shape \(3,\), got \(4,\)"),
    (lambda x, d: F.batch_norm(x, vec(3, d), vec(2, d)), r"running_var must have shape \(3,\), got \(2,\)"),
    (lambda x, d: F.batch_norm(x, None, None, vec(5, d), training=True), r"weight must have shape \(3,\)"),
    (lambda x, d: F.batch_norm(x, None, None, None, vec(1, d), training=True), r"bias must have shape \(3,\)"),
    (lambda x, d: F.batch_norm(x, None, None), "needs running_mean and running_var"),
    (lambda x, d: F.batch_norm(x, None, None, training=True, eps=-1.0), r"eps must be a finite number >= 0, got -1.0"),
    (lambda x, d: F.batch_norm(x, None, None, training=True, eps=float("nan")), "eps must be a finite"),
    (lambda x, d: F.batch_norm(x, None, None, training=True, momentum=1.5), r"momentum must be a number in \[0, 1\]"),
    (lambda x, d: F.group_norm(x, 2), "num_groups=2 must divide the number of channels, got C=3"),
    (lambda x, d: F.group_norm(x, 0), "num_groups must be an integer >= 1, got 0"),
    (lambda x, d: F.layer_norm(x, (4, 5)), r"normalized_shape=\(4, 5\) must match the trailing dimensions"),
    (lambda x, d: F.layer_norm(x, (4,), vec(3, d)), r"weight must have shape \(4,\), got \(3,\)"),
    (lambda x, d: F.layer_norm(x, ()), "normalized_shape must be a non-empty sequence"),
    (lambda x, d: F.rms_norm(x, (4,), eps=float("inf")), "eps must be a finite"),
    (lambda x, d: F.instance_norm(x, use_input_stats=False), "needs running_mean and running_var"),
    (lambda x, d: F.batch_renorm(x, vec(3, d), vec(3, d), training=True, rmax=0.5), "rmax must be a finite number >= 1"),
    (lambda x, d: F.batch_renorm(x, vec(3, d), vec(3, d), training=True, dmax=-1), "dmax must be a finite number >= 0"),
    (lambda x, d: F.batch_renorm(x, None, vec(3, d)), "needs running_mean and running_std"),
])
def test_functional_argument_errors(device, call, match):
    with pytest.raises(ValueError, match=match):
        call(x4(device), device)


@pytest.mark.parametrize("dtype", [numpy.int32, numpy.int64, numpy.bool_])
def test_integer_and_bool_input_is_a_type_error(device, dtype):
    x = cubn.tensor(to_dev(numpy.ones((2, 3, 2, 2), dtype), device))
    for call in (lambda: F.batch_norm(x, None, None, training=True), lambda: F.group_norm(x, 3),
                 lambda: F.layer_norm(x, (2,)), lambda: nn.BatchNorm2d(3)(x), lambda: F.rms_norm(x, (2,))):
        with pytest.raises(TypeError, match="input must be floating point"):
            call()


@pytest.mark.parametrize("layer,shape,match", [
    (lambda: nn.BatchNorm2d(3), (2, 3, 4), "BatchNorm2d: input must be 4-D, got 3-D"),
    (lambda: nn.BatchNorm1d(3), (2, 3, 4, 4), "BatchNorm1d: input must be 2-D or 3-D"),
    (lambda: nn.BatchNorm3d(3), (2, 3, 4, 4), "BatchNorm3d: input must be 5-D"),
    (lambda: nn.BatchNorm2d(4), (2, 3, 4, 4), r"BatchNorm2d\(4\) got input with 3 channels"),
    (lambda: nn.InstanceNorm2d(3), (2, 3), "InstanceNorm2d: input must be 4-D"),   # 3-D is unbatched (C, H, W)
    (lambda: nn.InstanceNorm2d(3), (2, 3, 4), r"InstanceNorm2d\(3\) got input with 2 channels"),
    (lambda: nn.GroupNorm(2, 4), (2, 3, 4, 4), r"GroupNorm\(2, 4\) got input with 3 channels"),
    (lambda: nn.LayerNorm(5), (2, 3, 4, 4), "must match the trailing dimensions"),
    (lambda: nn.BatchRenorm2d(3), (2, 3), "BatchRenorm2d: input must be 4-D"),
])
def test_module_rank_and_channel_errors(device, layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer().to(device)(x4(device, shape))


@pytest.mark.parametrize("make,match", [
    (lambda: nn.GroupNorm(3, 4), "num_groups=3 must divide num_channels=4"),
    (lambda: nn.GroupNorm(0, 4), "num_groups must be an integer >= 1"),
    (lambda: nn.BatchNorm2d(0), "num_features must be an integer >= 1, got 0"),
    (lambda: nn.BatchNorm2d(3, eps=-1e-5), "eps must be a finite number >= 0"),
    (lambda: nn.BatchNorm2d(3, momentum=-0.1), r"momentum must be a number in \[0, 1\] or None"),
    (lambda: nn.BatchRenorm2d(3, rmax=0.9), "rmax must be a finite number >= 1"),
    (lambda: nn.BatchRenorm2d(3, dmax=float("inf")), "dmax must be a finite number >= 0"),
    (lambda: nn.BatchRenorm2d(3, momentum=None), "Batch Renorm needs a momentum"),
    (lambda: nn.LayerNorm((3, 0)), "normalized_shape must be a non-empty sequence of positive ints"),
])
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer,shape,what", [
    (lambda: nn.BatchNorm1d(3), (1, 3), "value per channel"),
    (lambda: nn.BatchNorm2d(3), (1, 3, 1, 1), "value per channel"),
    (lambda: nn.InstanceNorm2d(3), (2, 3, 1, 1), "spatial element"),
    (lambda: nn.GroupNorm(3, 3), (2, 3, 1, 1), "value per group"),
    (lambda: nn.BatchRenorm1d(3), (1, 3), "value per channel"),
])
def test_degenerate_training_batches_raise_and_eval_works(device, layer, shape, what):
    m = layer().to(device)
    with pytest.raises(ValueError, match=f"Expected more than 1 {what} when training, got input of shape"):
        m(x4(device, shape))
    m.eval()
    if isinstance(m, nn.InstanceNorm2d):
        m = nn.InstanceNorm2d(3, track_running_stats=True).to(device).eval()
    y = m(x4(device, shape))
    assert y.shape == shape and numpy.isfinite(y.numpy()).all()


def test_state_dict_errors():
    bn = nn.BatchNorm2d(3)
    state = bn.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['running_var'\]"):
        bn.load_state_dict({k: v for k, v in state.items() if k != "running_var"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        bn.load_state_dict({**state, "extra": numpy.zeros(3)})
    bad = dict(state, running_mean=numpy.zeros(4, numpy.float32))
    before = bn.state_dict()
    with pytest.raises(ValueError, match=r"running_mean has shape \(4,\) in the state dict, expected \(3,\)"):
        bn.load_state_dict(bad)
    for k, v in bn.state_dict().items():  # nothing was half-loaded
        assert v.tobytes() == before[k].tobytes()
    result = bn.load_state_dict({"weight": numpy.full(3, 2.0)}, strict=False)
    assert result.missing_keys == ["bias", "running_mean", "running_var", "num_batches_tracked"]
    numpy.testing.assert_array_equal(bn.weight.numpy(), 2.0)


def test_tensor_level_errors():
    with pytest.raises(TypeError, match="requires_grad=True needs a floating-point tensor"):
        cubn.tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        cubn.tensor([1.0], device="tpu")
    with pytest.raises(TypeError, match="Sequential takes Modules"):
        nn.Sequential(nn.ReLU(), "relu")
