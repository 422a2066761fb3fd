"""Same arguments, same numbers as PyTorch (float64), where PyTorch has the operation.

Runs where PyTorch is importable (``pip install torch`` beside the test extra);
elsewhere the module is skipped as a whole. The float64 references in
``ref64_*.py`` check the same formulas on every machine.
"""
import numpy
import pytest

import cubn
import cubn.nn as nn
import cubn.nn.functional as F

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-10, atol=1e-12)


def pair(a):
    """A cubn tensor and a torch tensor with requires_grad over the same float64 values."""
    return cubn.tensor(a.copy(), requires_grad=True), torch.tensor(a.copy(), requires_grad=True)


def close(c, t):
    c = c.numpy() if isinstance(c, cubn.Tensor) else cubn.backend.to_numpy(c)
    numpy.testing.assert_allclose(c, t.detach().numpy(), **TOL)


def run_both(cubn_layer, torch_layer, inputs, train=True):
    """Feed the same batches to both layers; compare outputs, input and parameter grads, buffers."""
    cubn_layer.double().train(train)
    torch_layer.double().train(train)
    rng = numpy.random.default_rng(0)
    for x in inputs:
        xc, xt = pair(x)
        yc, yt = cubn_layer(xc), torch_layer(xt)
        dy = rng.standard_normal(x.shape)
        yc.backward(dy)
        yt.backward(torch.tensor(dy))
        close(yc, yt)
        close(xc.grad, xt.grad)
    for (name, p), (tname, tp) in zip(cubn_layer.named_parameters(), torch_layer.named_parameters()):
        assert name == tname
        close(p.grad, tp.grad)
    tstate = torch_layer.state_dict()
    for name, value in cubn_layer.state_dict().items():
        if name == "num_batches_tracked" and isinstance(cubn_layer, nn.InstanceNorm2d):
            continue  # PyTorch's InstanceNorm never counts; cubn's does, like its BatchNorm
        if name == "num_batches_skipped":
            continue  # cubn's own counter (nonfinite="skip"); PyTorch has none
        numpy.testing.assert_allclose(cubn.backend.to_numpy(value), tstate[name].numpy(), **TOL)


def batches(shape, n=3, loc=2.0):
    rng = numpy.random.default_rng(1)
    return [loc + (1 + k) * rng.standard_normal((shape[0] + k,) + shape[1:]) for k in range(n)]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls,shape", [("BatchNorm1d", (5, 3)), ("BatchNorm1d", (4, 3, 6)),
                                       ("BatchNorm2d", (4, 3, 5, 5)), ("BatchNorm3d", (2, 3, 2, 3, 4))])
def test_batchnorm_training_then_eval(cls, shape, momentum):
    c, t = getattr(nn, cls)(3, momentum=momentum), getattr(torch.nn, cls)(3, momentum=momentum)
    with torch.no_grad():
        t.weight.uniform_(0.5, 2)
        t.bias.normal_()
    c.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    run_both(c, t, batches(shape))
    run_both(c, t, batches(shape, 1), train=False)


@pytest.mark.parametrize("affine,track", [(False, False), (True, True)])
def test_instance_norm(affine, track):
    c = nn.InstanceNorm2d(3, affine=affine, track_running_stats=track)
    t = torch.nn.InstanceNorm2d(3, affine=affine, track_running_stats=track)
    run_both(c, t, batches((2, 3, 4, 5)))
    run_both(c, t, batches((2, 3, 4, 5), 1), train=False)


def test_group_layer_rms_norm():
    run_both(nn.GroupNorm(2, 6), torch.nn.GroupNorm(2, 6), batches((3, 6, 4, 4)))
    run_both(nn.LayerNorm((4, 5)), torch.nn.LayerNorm((4, 5)), batches((3, 2, 4, 5)))
    run_both(nn.LayerNorm(5, bias=False), torch.nn.LayerNorm(5, bias=False), batches((3, 5)))
    run_both(nn.RMSNorm((4, 5)), torch.nn.RMSNorm((4, 5)), batches((3, 2, 4, 5)))
    run_both(nn.RMSNorm(5, eps=1e-3), torch.nn.RMSNorm(5, eps=1e-3), batches((3, 5)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy(reduction, smoothing):
    rng = numpy.random.default_rng(0)
    logits, target = 3 * rng.standard_normal((6, 4, 2)), rng.integers(0, 4, (6, 2))
    lc, lt = pair(logits)
    yc = F.cross_entropy(lc, cubn.tensor(target), reduction=reduction, label_smoothing=smoothing)
    yt = torch.nn.functional.cross_entropy(lt, torch.tensor(target), reduction=reduction,
                                           label_smoothing=smoothing)
    dy = rng.standard_normal(yt.shape)
    yc.backward(dy)
    yt.backward(torch.tensor(dy))
    close(yc, yt)
    close(lc.grad, lt.grad)



SHAPE_OPS = {"transpose(0,1)": lambda t: t.transpose(0, 1), "transpose(-1,0)": lambda t: t.transpose(-1, 0),
             "transpose(1,1)": lambda t: t.transpose(1, 1)}


@pytest.mark.parametrize("name", SHAPE_OPS)
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4)])
def test_shape_ops_follow_torch(name, shape):
    xc, xt = pair(numpy.random.default_rng(1).standard_normal(shape))
    yc, yt = SHAPE_OPS[name](xc), SHAPE_OPS[name](xt)
    assert yc.shape == tuple(yt.shape), f"{name} of {shape}: {yc.shape} vs torch {tuple(yt.shape)}"
    close(yc, yt)


REDUCTIONS = {"sum(dim=1)": lambda t: t.sum(dim=1), "sum((0,2), keepdim)": lambda t: t.sum((0, 2), keepdim=True),
              "mean(-1)": lambda t: t.mean(-1), "amax(dim=(0,1))": lambda t: t.amax(dim=(0, 1)),
              "amin(2)": lambda t: t.amin(2), "max()": lambda t: t.max(), "min()": lambda t: t.min(),
              "max(1).values": lambda t: t.max(1).values, "min(dim=0, keepdim).values":
                  lambda t: t.min(dim=0, keepdim=True).values,
              "softmax(dim=1)": lambda t: t.softmax(dim=1), "log_softmax(0)": lambda t: t.log_softmax(0)}


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reductions_follow_torch(name):
    x = numpy.random.default_rng(2).permutation(24).reshape(2, 3, 4) / 7.0
    (xc, xt), dy_seed = pair(x), numpy.random.default_rng(3)
    yc, yt = REDUCTIONS[name](xc), REDUCTIONS[name](xt)
    assert yc.shape == tuple(yt.shape), f"{name}: {yc.shape} vs torch {tuple(yt.shape)}"
    close(yc, yt)
    dy = dy_seed.standard_normal(yc.shape)
    yc.backward(dy)
    yt.backward(torch.tensor(dy))
    close(xc.grad, xt.grad)


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_indices_follow_torch(op):
    x = numpy.random.default_rng(4).permutation(24).reshape(2, 3, 4).astype(numpy.float64)
    for dim, keepdim in ((0, False), (1, True), (-1, False)):
        c, t = getattr(cubn.tensor(x), op)(dim, keepdim), getattr(torch.tensor(x), op)(dim, keepdim)
        assert c.indices.numpy().tolist() == t.indices.numpy().tolist()
        assert c.values.numpy().tolist() == t.values.numpy().tolist()


def test_a_whole_torch_model_loads_and_computes_the_same():
    tm = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Flatten(),
                             torch.nn.Linear(12, 4)).double()
    tm.train()
    tm(torch.randn(8, 2, 4, 4, dtype=torch.float64))      # running statistics away from (0, 1)
    tm.eval()
    cm = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()
    result = nn.from_torch_state_dict(cm, {k: v.numpy() for k, v in tm.state_dict().items()})
    assert result.skipped == [] and len(result.loaded) == len(tm.state_dict())
    x = numpy.random.default_rng(9).standard_normal((5, 2, 4, 4))
    close(cm.eval()(cubn.tensor(x)), tm(torch.tensor(x)))
