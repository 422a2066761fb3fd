"""Module, Parameter, Sequential, Linear and SGD."""
import numpy
import pytest

import cubn
import cubn.nn as nn
from conftest import to_dev
from gradcheck import check_autodiff


def make_model():
    cubn.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2, bias=False))


def test_registration_and_traversal():
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight"]
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                                                     "1.num_batches_skipped"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    assert len(model) == 4 and isinstance(model[1], nn.BatchNorm1d)
    assert [type(m).__name__ for m in model.children()] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert list(model.state_dict()) == names[:4] + ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                                                    "1.num_batches_skipped", "3.weight"]


def test_sequential_accepts_a_list_like_keras():
    layers = [nn.Linear(3, 3), nn.ReLU()]
    assert list(nn.Sequential(layers)) == layers


def test_train_eval_reach_every_child():
    model = make_model()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_and_repr():
    model = make_model()
    x = cubn.tensor(numpy.random.default_rng(0).standard_normal((5, 4)).astype(numpy.float32))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    text = repr(model)
    assert "(1): BatchNorm1d(8, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)" in text
    assert "(3): Linear(in_features=8, out_features=2, bias=False)" in text


def test_linear_init_matches_pytorch_bounds_and_is_seeded():
    a, b = make_model()[0], make_model()[0]
    assert a.weight.numpy().tobytes() == b.weight.numpy().tobytes()
    bound = 1 / numpy.sqrt(4)
    assert numpy.abs(a.weight.numpy()).max() <= bound and numpy.abs(a.bias.numpy()).max() <= bound
    assert a.weight.shape == (8, 4) and a.weight.dtype == numpy.float32


def test_linear_gradients():
    rng = numpy.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    check_autodiff(nn.functional.linear, x, w, b)


def test_to_moves_and_casts(device):
    model = make_model().to(device).double()
    for t in list(model.parameters()) + [model[1].running_mean]:
        assert t.device == device and t.dtype == numpy.float64
    assert model[1].num_batches_tracked.dtype == numpy.int64  # integer buffers are not cast
    x = cubn.tensor(to_dev(numpy.ones((3, 4)), device))
    assert model(x).device == device


def test_sgd_follows_the_pytorch_update_rule():
    p = nn.Parameter(numpy.array([1.0, -2.0]))
    opt = cubn.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    grads = [numpy.array([0.5, 1.0]), numpy.array([-1.0, 0.25])]
    value, buf = p.data.copy(), None
    for g in grads:
        p.grad = g.copy()
        opt.step()
        d = g + 0.01 * value
        buf = d if buf is None else 0.9 * buf + d
        value = value - 0.1 * (d + 0.9 * buf)
        numpy.testing.assert_allclose(p.data, value, rtol=1e-12)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        cubn.optim.SGD([p], lr=0)
    with pytest.raises(ValueError, match="nesterov=True needs a momentum > 0"):
        cubn.optim.SGD([p], lr=0.1, nesterov=True)
