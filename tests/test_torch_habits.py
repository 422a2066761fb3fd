"""PyTorch names on Tensor and cubn behave as PyTorch's: gradients, shapes, dtypes, Python conversions.

Each behaviour is checked on every machine (float64 finite differences with a random upstream
gradient, or the value PyTorch documents); ``test_*_follow_torch`` compare with torch itself where
it is importable.
"""
import numpy
import pytest

import cubn
from gradcheck import check_autodiff


def rng(seed=0):
    return numpy.random.default_rng(seed)


X = rng().standard_normal((2, 3, 4))
X[0, 0, 0] = 0.0   # a kink of abs and an exact clamp bound stay out of the finite differences below
OPS = {
    "abs": lambda t: (t + 0.05).abs(),
    "clamp(-0.5, 0.4)": lambda t: t.clamp(-0.55, 0.45),
    "clamp(min=0)": lambda t: t.clamp(min=0.05),
    "unsqueeze(1)": lambda t: t.unsqueeze(1),
    "unsqueeze(-1)": lambda t: t.unsqueeze(-1),
    "squeeze": lambda t: t.unsqueeze(0).unsqueeze(3).squeeze(),
    "squeeze(0)": lambda t: t.unsqueeze(0).squeeze(0),
    "clone": lambda t: t.clone() * 2,
    "double()": lambda t: t.double() * 2.0,
    "cat(dim=1)": lambda t: cubn.cat([t, t * 2.0, t[:, :1]], dim=1),
    "cat(dim=-1)": lambda t: cubn.cat([t, t.exp()], -1),
    "stack(dim=0)": lambda t: cubn.stack([t, t * t]),
    "stack(dim=2)": lambda t: cubn.stack([t, -t], dim=2),
    "where": lambda t: cubn.where(t.data > 0.1, t * 3.0, t * t),
    "where scalar": lambda t: cubn.where(t.data > 0.1, t, 0.0),
}


@pytest.mark.parametrize("name", OPS)
def test_gradients(name):
    check_autodiff(OPS[name], X)


def test_shapes_and_dtypes():
    t = cubn.tensor(X)
    assert t.unsqueeze(0).shape == (1, 2, 3, 4) and t.unsqueeze(3).shape == (2, 3, 4, 1)
    assert t.unsqueeze(0).squeeze(1).shape == (1, 2, 3, 4)      # a dim not of size 1 stays, as torch
    assert t.numel() == 24 and t.dim() == 3
    assert t.float().dtype == numpy.float32 and t.half().dtype == numpy.float16 and t.long().dtype == numpy.int64
    assert t.to(cubn.float32).dtype == numpy.float32 and t.to("cpu", cubn.float16).dtype == numpy.float16
    assert t.to(dtype=numpy.float32).dtype == numpy.float32
    leaf = cubn.tensor(X, requires_grad=True)
    assert leaf.long().requires_grad is False and leaf.float().requires_grad    # as torch: ints leave the tape
    (leaf.float() * 2).sum().backward()
    assert leaf.grad.dtype == numpy.float64 and (leaf.grad == 2).all()          # the gradient in the leaf's dtype
    assert cubn.cat([t, t], 0).shape == (4, 3, 4) and cubn.stack([t, t], -1).shape == (2, 3, 4, 2)
    with pytest.raises(ValueError, match="differ elsewhere"):
        cubn.cat([t, t[:, :2]], dim=0)
    with pytest.raises(ValueError, match="one shape"):
        cubn.stack([t, t[:1]])
    with pytest.raises(TypeError, match="bool"):
        cubn.where(t.data, t, t)
    with pytest.raises(ValueError, match="min or max"):
        t.clamp()


def test_one_element_tensors_in_python():
    loss = cubn.tensor([3.0])
    assert not (loss > 5) and bool(loss > 1) and float(loss) == 3.0 and int(loss) == 3
    assert f"{loss:.2f}" == "3.00" and f"{cubn.tensor(2.5):>5}" == "  2.5"
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(cubn.tensor([1.0, 2.0]) > 0)
    with pytest.raises(TypeError, match="one-element"):
        f"{cubn.tensor([1.0, 2.0]):.2f}"
    assert f"{cubn.tensor([1.0, 2.0])}" == str(cubn.tensor([1.0, 2.0]))


def test_creation_defaults():
    assert cubn.zeros(2, 3).shape == (2, 3) and cubn.zeros((2, 3)).dtype == numpy.float32
    assert cubn.ones(4).numpy().tolist() == [1.0] * 4 and cubn.empty(2, 2).shape == (2, 2)
    assert cubn.full((2,), 7).dtype == numpy.int64 and cubn.full((2,), 7.0).dtype == numpy.float32
    assert cubn.full((1,), True).dtype == numpy.bool_
    assert cubn.arange(5).dtype == numpy.int64 and cubn.arange(0, 1, 0.25).numpy().tolist() == [0, 0.25, 0.5, 0.75]
    assert cubn.linspace(0, 1, 5).numpy().tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    t = cubn.tensor(X)
    assert cubn.zeros_like(t).dtype == numpy.float64 and cubn.ones_like(t, dtype=cubn.float32).dtype == numpy.float32
    assert cubn.full_like(t, 2.0).numpy().max() == 2.0
    cubn.manual_seed(5)
    a = cubn.randn(3, 2)
    cubn.manual_seed(5)
    assert a.dtype == numpy.float32 and cubn.randn(3, 2).numpy().tolist() == a.numpy().tolist()
    u = cubn.rand(1000).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert cubn.zeros(2, requires_grad=True).requires_grad
    shared = numpy.zeros(3)
    cubn.from_numpy(shared).data[0] = 5.0
    assert shared[0] == 5.0                                        # shares memory, as torch.from_numpy
    with pytest.raises(ValueError, match="sizes"):
        cubn.zeros(2, -1)


# ---------------------------------------------------------------------------
# Against torch itself
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


TORCH_OPS = {
    "abs": (lambda t: t.abs(), lambda t: t.abs()),
    "clamp": (lambda t: t.clamp(-0.5, 0.4), lambda t: t.clamp(-0.5, 0.4)),
    "unsqueeze(-2)": (lambda t: t.unsqueeze(-2), lambda t: t.unsqueeze(-2)),
    "squeeze": (lambda t: t.unsqueeze(0).squeeze(), lambda t: t.unsqueeze(0).squeeze()),
    "cat": (lambda t: cubn.cat([t, t * 2.0], 1), None),
    "stack": (lambda t: cubn.stack([t, t * 2.0], 2), None),
    "where": (lambda t: cubn.where(t.data > 0, t, t * t), None),
}


@pytest.mark.parametrize("name", TORCH_OPS)
def test_ops_follow_torch(torch, name):
    ours, theirs = TORCH_OPS[name]
    if theirs is None:
        theirs = {"cat": lambda t: torch.cat([t, t * 2.0], 1), "stack": lambda t: torch.stack([t, t * 2.0], 2),
                  "where": lambda t: torch.where(t > 0, t, t * t)}[name]
    xc, xt = cubn.tensor(X.copy(), requires_grad=True), torch.tensor(X.copy(), requires_grad=True)
    yc, yt = ours(xc), theirs(xt)
    numpy.testing.assert_allclose(yc.numpy(), yt.detach().numpy(), rtol=1e-12)
    dy = rng(1).standard_normal(yc.shape)
    yc.backward(dy)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(xc.grad, xt.grad.numpy(), rtol=1e-12)


def test_creation_follows_torch(torch):
    pairs = [(cubn.zeros(2, 3), torch.zeros(2, 3)), (cubn.arange(5), torch.arange(5)),
             (cubn.arange(0, 1, 0.25), torch.arange(0, 1, 0.25)), (cubn.full((2,), 7), torch.full((2,), 7)),
             (cubn.full((2,), 7.0), torch.full((2,), 7.0)), (cubn.linspace(0, 1, 5), torch.linspace(0, 1, 5))]
    for c, t in pairs:
        assert c.shape == tuple(t.shape) and str(c.dtype) == str(t.dtype).replace("torch.", ""), (c, t)
        numpy.testing.assert_allclose(c.numpy(), t.numpy())
    assert bool(cubn.tensor([3.0]) > 1) == bool(torch.tensor([3.0]) > 1)
    assert f"{cubn.tensor(2.5):.3f}" == f"{torch.tensor(2.5):.3f}"


# ---------------------------------------------------------------------------
# Modules and helpers
# ---------------------------------------------------------------------------
class Net(cubn.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = cubn.nn.ModuleList([cubn.nn.Linear(4, 4), cubn.nn.Linear(4, 3)])
        self.heads = cubn.nn.ModuleDict({"a": cubn.nn.Linear(3, 2)})
        self.add_module("extra", cubn.nn.Linear(2, 2))

    def forward(self, x):
        for block in self.blocks:
            x = block(x).relu()
        return self.extra(self.heads["a"](x))


def test_module_containers_register_their_children():
    net = Net()
    assert [name for name, _ in net.named_parameters()] == [
        "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "heads.a.weight", "heads.a.bias",
        "extra.weight", "extra.bias"]
    assert len(net.blocks) == 2 and isinstance(net.blocks[1:], cubn.nn.ModuleList) and "a" in net.heads
    assert net(cubn.randn(5, 4)).shape == (5, 2)
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "Linear", "ModuleList", "Linear", "ModuleDict", "Linear", "Net"]   # children first
    assert net.half().blocks[0].weight.dtype == numpy.float16 and net.to(numpy.float64).extra.bias.dtype == numpy.float64
    with pytest.raises(TypeError, match="must be a Module"):
        net.add_module("x", 3)


def test_init_formulas():
    cubn.manual_seed(0)
    w = cubn.nn.Linear(400, 300).weight                 # fan_in 400, fan_out 300
    bound = numpy.sqrt(3.0) * numpy.sqrt(2.0) / numpy.sqrt(400)
    cubn.nn.init.kaiming_uniform_(w)
    assert numpy.abs(w.numpy()).max() <= bound and numpy.abs(w.numpy()).max() > 0.99 * bound
    cubn.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert w.numpy().std() == pytest.approx(numpy.sqrt(2.0 / 300), rel=0.02)
    cubn.nn.init.xavier_uniform_(w, gain=2.0)
    assert numpy.abs(w.numpy()).max() <= 2.0 * numpy.sqrt(6.0 / 700)
    cubn.nn.init.xavier_normal_(w)
    assert w.numpy().std() == pytest.approx(numpy.sqrt(2.0 / 700), rel=0.02)
    assert (cubn.nn.init.zeros_(w).numpy() == 0).all() and (cubn.nn.init.ones_(w).numpy() == 1).all()
    assert (cubn.nn.init.constant_(w, 0.5).numpy() == 0.5).all() and w.dtype == numpy.float32
    assert cubn.nn.init.calculate_gain("tanh") == 5.0 / 3 and cubn.nn.init.calculate_gain("leaky_relu", 0.2) == \
        pytest.approx(numpy.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="2 or more dimensions"):
        cubn.nn.init.kaiming_uniform_(cubn.nn.Linear(3, 2).bias)


def test_clip_grad_norm():
    params = [cubn.tensor(numpy.zeros(3), requires_grad=True), cubn.tensor(numpy.zeros(2), requires_grad=True)]
    params[0].grad, params[1].grad = numpy.array([3.0, 0.0, 0.0]), numpy.array([0.0, 4.0])
    norm = cubn.nn.utils.clip_grad_norm_(params, 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert numpy.concatenate([p.grad for p in params]) == pytest.approx(numpy.array([0.6, 0, 0, 0, 0.8]), rel=1e-5)
    assert float(cubn.nn.utils.clip_grad_norm_(params, 10.0, norm_type="inf")) == pytest.approx(0.8, rel=1e-5)


def test_losses():
    F = cubn.nn.functional
    logp = cubn.tensor(numpy.log(numpy.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])), requires_grad=True)
    loss = F.nll_loss(logp, cubn.tensor(numpy.array([0, 1])))
    assert loss.item() == pytest.approx(-(numpy.log(0.5) + numpy.log(0.8)) / 2)
    check_autodiff(lambda t: F.nll_loss(t, cubn.tensor(numpy.array([2, 0])), reduction="none"), logp.numpy())
    check_autodiff(lambda a, b: F.mse_loss(a, b, reduction="sum"), X, X[::-1].copy())
    with pytest.raises(ValueError, match="outside"):
        F.nll_loss(logp, cubn.tensor(numpy.array([0, 3])))


def test_modules_and_helpers_follow_torch(torch):
    tnn = torch.nn

    class TorchNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = tnn.ModuleList([tnn.Linear(4, 4), tnn.Linear(4, 3)])
            self.heads = tnn.ModuleDict({"a": tnn.Linear(3, 2)})
            self.add_module("extra", tnn.Linear(2, 2))

    assert list(Net().state_dict()) == list(TorchNet().state_dict())
    seen = []
    TorchNet().apply(lambda m: seen.append(type(m).__name__))
    ours = []
    Net().apply(lambda m: ours.append(type(m).__name__))
    assert [n.replace("TorchNet", "Net") for n in seen] == ours
    grads = [rng(3).standard_normal(5), rng(4).standard_normal((2, 3))]
    for norm_type in (2.0, 1.0, float("inf")):
        c = [cubn.tensor(numpy.zeros(g.shape), requires_grad=True) for g in grads]
        t = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        for p, q, g in zip(c, t, grads):
            p.grad, q.grad = g.copy(), torch.tensor(g)
        assert float(cubn.nn.utils.clip_grad_norm_(c, 0.5, norm_type)) == pytest.approx(
            float(torch.nn.utils.clip_grad_norm_(t, 0.5, norm_type)), rel=1e-6)
        for p, q in zip(c, t):
            numpy.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-6)
    for name in ("relu", "tanh", "sigmoid", "linear", "selu"):
        assert cubn.nn.init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    logp = rng(5).standard_normal((4, 3))
    target = numpy.array([0, 2, 1, 2])
    for reduction in ("mean", "sum", "none"):
        c = cubn.nn.functional.nll_loss(cubn.tensor(logp), cubn.tensor(target), reduction=reduction)
        t = torch.nn.functional.nll_loss(torch.tensor(logp), torch.tensor(target), reduction=reduction)
        numpy.testing.assert_allclose(c.numpy(), t.numpy(), rtol=1e-12)
        c = cubn.nn.functional.mse_loss(cubn.tensor(logp), cubn.tensor(logp * 0.5), reduction=reduction)
        t = torch.nn.functional.mse_loss(torch.tensor(logp), torch.tensor(logp * 0.5), reduction=reduction)
        numpy.testing.assert_allclose(c.numpy(), t.numpy(), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda **kw: cubn.nn.BatchNorm2d(3, **kw), lambda **kw: cubn.nn.GroupNorm(3, 3, **kw),
                                  lambda **kw: cubn.nn.InstanceNorm2d(3, affine=True, **kw)],
                         ids=["BatchNorm2d", "GroupNorm", "InstanceNorm2d"])
def test_norm_bias_false_learns_a_scale_only(make):
    layer = make(bias=False)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"] and "bias=False" in repr(layer)
    layer.weight.data[...] = numpy.array([1.0, 2.0, 3.0], numpy.float32)
    x = rng(6).standard_normal((4, 3, 5, 5)).astype(numpy.float32)
    with_bias = make()
    with_bias.weight.data[...] = layer.weight.data
    numpy.testing.assert_array_equal(layer(cubn.tensor(x)).numpy(), with_bias(cubn.tensor(x)).numpy())


@pytest.mark.parametrize("cls, shape", [("InstanceNorm1d", (3, 7)), ("InstanceNorm2d", (3, 4, 5)),
                                        ("InstanceNorm3d", (3, 2, 3, 4))])
def test_instance_norm_takes_unbatched_input(cls, shape):
    layer = getattr(cubn.nn, cls)(3, affine=True)
    x = rng(7).standard_normal(shape).astype(numpy.float32)
    y = layer(cubn.tensor(x))
    assert y.shape == shape
    numpy.testing.assert_array_equal(y.numpy(), layer(cubn.tensor(x[None])).numpy()[0])


def test_norm_bias_and_unbatched_follow_torch(torch):
    x = rng(8).standard_normal((4, 3, 5, 5))
    for name, args in (("BatchNorm2d", (3,)), ("GroupNorm", (3, 3)), ("InstanceNorm2d", (3,))):
        c, t = getattr(cubn.nn, name)(*args, bias=False), getattr(torch.nn, name)(*args, bias=False)
        assert [k for k in c.state_dict() if k != "num_batches_skipped"] == list(t.state_dict()), name  # cubn's extra
        c.double(), t.double()
        numpy.testing.assert_allclose(c(cubn.tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy(), rtol=1e-10,
                                      atol=1e-12)
    c, t = cubn.nn.InstanceNorm2d(3).double(), torch.nn.InstanceNorm2d(3).double()
    numpy.testing.assert_allclose(c(cubn.tensor(x[0])).numpy(), t(torch.tensor(x[0])).numpy(), rtol=1e-10, atol=1e-12)


def test_linear_with_a_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"linear: input's last dimension must be in_features = 20, got input of "
                                         r"shape \(4, 19\)"):
        cubn.nn.Linear(20, 3)(cubn.randn(4, 19))
    with pytest.raises(TypeError, match="floating point"):
        cubn.nn.Linear(2, 3)(cubn.arange(4).reshape(2, 2))


# ---------------------------------------------------------------------------
# DLPack
# ---------------------------------------------------------------------------
def test_dlpack_with_numpy_shares_memory():
    t = cubn.tensor(numpy.arange(6.0).reshape(2, 3))
    a = numpy.from_dlpack(t)
    a[0, 0] = 42.0
    assert t.numpy()[0, 0] == 42.0 and t.__dlpack_device__()[0] == 1
    back = cubn.from_dlpack(a)
    back.data[1, 2] = -1.0
    assert t.numpy()[1, 2] == -1.0 and back.shape == (2, 3)
    with pytest.raises(BufferError, match="requires grad"):
        numpy.from_dlpack(cubn.tensor(numpy.ones(2), requires_grad=True))
    numpy.from_dlpack(cubn.tensor(numpy.ones(2), requires_grad=True).detach())
    with pytest.raises(TypeError, match="__dlpack__"):
        cubn.from_dlpack([1, 2])


def test_dlpack_with_torch_shares_memory(torch):
    t = cubn.tensor(numpy.zeros((2, 2), numpy.float32))
    tt = torch.from_dlpack(t)
    tt[0, 1] = 5.0
    assert t.numpy()[0, 1] == 5.0
    source = torch.arange(4.0)
    c = cubn.from_dlpack(source)
    source[2] = 9.0
    assert c.numpy().tolist() == [0.0, 1.0, 9.0, 3.0] and c.dtype == numpy.float32
    with pytest.raises(BufferError):
        torch.from_dlpack(cubn.tensor(numpy.ones(2), requires_grad=True))


def test_size_var_std_setitem():
    t = cubn.tensor(X)
    assert t.size() == (2, 3, 4) and t.size(0) == 2 and t.size(-1) == 4 and t.size == 24   # torch's, and numpy's
    assert t.view(t.size(0), -1).shape == (2, 12)
    for kw, ddof in (({}, 1), ({"unbiased": False}, 0), ({"correction": 0}, 0), ({"correction": 2}, 2)):
        numpy.testing.assert_allclose(t.var(1, **kw).numpy(), X.var(axis=1, ddof=ddof), rtol=1e-12)
        numpy.testing.assert_allclose(t.std((0, 2), keepdim=True, **kw).numpy(),
                                      X.std(axis=(0, 2), ddof=ddof, keepdims=True), rtol=1e-12)
    assert t.var().item() == pytest.approx(X.var(ddof=1))
    check_autodiff(lambda u: u.var(dim=2), X)
    check_autodiff(lambda u: u.std(dim=(0, 1), unbiased=False), X)
    with pytest.raises(TypeError, match="not both"):
        t.var(0, unbiased=True, correction=1)
    z = cubn.zeros(2, 3)
    z[0] = cubn.tensor([1.0, 2.0, 3.0])
    z[1, 2] = 7.0
    assert z.numpy().tolist() == [[1, 2, 3], [0, 0, 7]]
    with pytest.raises(RuntimeError, match="requires grad"):
        cubn.zeros(2, requires_grad=True)[0] = 1.0


def test_embedding():
    cubn.manual_seed(0)
    emb = cubn.nn.Embedding(10, 4, padding_idx=0)
    idx = cubn.tensor(numpy.array([[1, 0, 3], [3, 9, 0]]))
    out = emb(idx)
    assert out.shape == (2, 3, 4) and (out.numpy()[0, 1] == 0).all()
    numpy.testing.assert_array_equal(out.numpy()[1, 0], emb.weight.numpy()[3])
    dy = rng(9).standard_normal(out.shape)
    out.backward(dy)
    numpy.testing.assert_allclose(emb.weight.grad[3], dy[0, 2] + dy[1, 0])
    assert (emb.weight.grad[0] == 0).all() and (emb.weight.grad[5] == 0).all()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        emb(cubn.tensor(numpy.array([10])))
    with pytest.raises(TypeError, match="integer indices"):
        emb(cubn.tensor(numpy.array([1.0])))


def test_size_var_and_embedding_follow_torch(torch):
    t, tt = cubn.tensor(X), torch.tensor(X)
    assert t.size() == tuple(tt.size()) and t.size(1) == tt.size(1)
    for kw in ({}, {"unbiased": False}, {"correction": 0}):
        numpy.testing.assert_allclose(t.var(1, **kw).numpy(), tt.var(1, **kw).numpy(), rtol=1e-12)
        numpy.testing.assert_allclose(t.std(**kw).numpy(), tt.std(**kw).numpy(), rtol=1e-12)
    ce, te = cubn.nn.Embedding(10, 4, padding_idx=2).double(), torch.nn.Embedding(10, 4, padding_idx=2).double()
    ce.weight.data[...] = te.weight.detach().numpy()
    idx = numpy.array([[1, 2, 3], [3, 9, 2]])
    yc, yt = ce(cubn.tensor(idx)), te(torch.tensor(idx))
    numpy.testing.assert_allclose(yc.numpy(), yt.detach().numpy())
    dy = rng(10).standard_normal(yc.shape)
    yc.backward(dy)
    yt.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(ce.weight.grad, te.weight.grad.numpy(), rtol=1e-12)
