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
