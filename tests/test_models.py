"""cubn.models: every model x norm builds, runs both modes on both paths, and trains every parameter."""
import numpy
import pytest

import cubn
from cubn import models, nn
from cubn.models.norms import ChannelRMSNorm, norm_layer
from conftest import to_dev
from gradcheck import check_autodiff

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True

EXPECTED = {  # norm -> the layer class it puts after a conv, and after a linear
    "bn": (nn.BatchNorm2d, nn.BatchNorm1d), "brn": (nn.BatchRenorm2d, nn.BatchRenorm1d),
    "gn": (nn.GroupNorm, nn.GroupNorm), "ln": (nn.GroupNorm, nn.LayerNorm), "in": (nn.InstanceNorm2d, None),
    "rms": (ChannelRMSNorm, nn.RMSNorm), "none": (nn.Identity, nn.Identity)}


@pytest.mark.parametrize("norm", models.NORMS)
def test_norm_flag_swaps_every_layer(norm):
    model = models.resnet20(norm=norm)
    conv_norms = [m for m in model.modules() if isinstance(m, EXPECTED[norm][0])]
    # 19 after the 3x3 convs, 2 in the projection shortcuts (and, for "none", the 7 identity shortcuts)
    assert len(conv_norms) == 19 + 2 + (7 if norm == "none" else 0)
    others = (nn.BatchNorm2d, nn.BatchRenorm2d, nn.GroupNorm, nn.InstanceNorm2d, ChannelRMSNorm)
    assert not [m for m in model.modules() if isinstance(m, others) and not isinstance(m, EXPECTED[norm][0])]
    # a conv followed by a norm with a shift has no bias of its own
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all((c.bias is None) == (norm not in ("rms", "none")) for c in convs)


def test_group_counts_and_linear_norms():
    assert norm_layer("gn", 16).num_groups == 8 and norm_layer("gn", 12).num_groups == 4
    assert norm_layer("ln", 16).num_groups == 1
    for norm, (_, linear_cls) in EXPECTED.items():
        if linear_cls is None:
            with pytest.raises(ValueError, match="norm='in' needs spatial positions"):
                norm_layer(norm, 8, spatial=False)
        else:
            assert isinstance(norm_layer(norm, 8, spatial=False), linear_cls)


def test_bad_names():
    with pytest.raises(ValueError, match="norm must be one of"):
        models.resnet20(norm="batch")
    with pytest.raises(ValueError, match="model must be one of"):
        models.create("resnet18", 3, 10, (32, 32))
    with pytest.raises(ValueError, match="depth must be 6n"):
        models.ResNet(depth=21)


def test_resnet20_size():
    """0.27 M weights, as in the paper (ours has projection shortcuts: 272,474)."""
    n = sum(p.data.size for p in models.resnet20().parameters())
    assert 269_000 < n < 275_000, n


@pytest.mark.parametrize("name,norm", [(n, m) for n in models.MODELS for m in models.NORMS
                                       if not (n == "mlp" and m == "in")])
def test_forward_backward_every_parameter(name, norm, device):
    cubn.manual_seed(0)
    model = models.create(name, 3, 10, (16, 16), norm).to(device)
    x = cubn.tensor(to_dev(numpy.random.default_rng(0).standard_normal((4, 3, 16, 16), numpy.float32), device))
    logits = model(x)
    assert logits.shape == (4, 10) and logits.device == device
    dy = numpy.random.default_rng(1).standard_normal(logits.shape).astype(numpy.float32)
    logits.backward(to_dev(dy, device))  # a random upstream gradient: a sum would give normalized layers none
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(bool(numpy.isfinite(cubn.backend.to_numpy(p.grad)).all()) for p in model.parameters())
    model.eval()
    with cubn.no_grad():
        assert numpy.isfinite(model(x).numpy()).all()


def test_channel_rms_norm_values_and_gradient():
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((3, 4, 2, 5))
    layer = ChannelRMSNorm(4, eps=1e-5).double()
    layer.weight.data[...] = rng.standard_normal(4)
    rms = numpy.sqrt((x ** 2).mean(axis=(1, 2, 3), keepdims=True) + 1e-5)
    want = x / rms * layer.weight.data.reshape(1, 4, 1, 1)
    numpy.testing.assert_allclose(layer(cubn.tensor(x)).numpy(), want, rtol=1e-12)

    def fn(x, w):
        layer._parameters["weight"] = w  # the checker's leaf tensor stands in for the Parameter
        return layer(x)

    check_autodiff(fn, x, rng.standard_normal(4))
