"""cubn.checkpoint: same values and gradients as without it, running statistics updated once."""
import copy

import numpy
import pytest

import cubn
from cubn import backend, nn, random
from cubn.recompute import _Recompute
from conftest import to_dev

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True


def rand(shape, seed=0, dtype=numpy.float32):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


def block():
    cubn.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))


def run(model, x, dy, use_checkpoint, seed=7, as_module=True, device="cpu"):
    """One training step's forward and backward; returns (output, input grad, state, next random draw)."""
    random.manual_seed(seed)
    t = cubn.tensor(to_dev(x, device), requires_grad=True)
    h = t * 2.0  # something before the block, so the block's input is not a leaf
    fn = model if as_module else (lambda inp: model(inp))  # a plain function: no buffer snapshot
    y = cubn.checkpoint(fn, h) if use_checkpoint else model(h)
    if use_checkpoint:
        assert isinstance(y._ctx, _Recompute)  # one node on the tape, nothing saved inside the block
    (y * cubn.tensor(to_dev(dy, device))).sum().backward()
    state = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    return y.numpy(), backend.to_numpy(t.grad), state, random.get_rng().random()


@pytest.mark.parametrize("as_module", [True, False])
def test_gradients_and_running_stats_are_bitwise_those_without_checkpointing(as_module, device):
    x, dy = rand((4, 3, 5, 5), 1), rand((4, 4, 5, 5), 2)
    plain, ckpt = block().train().to(device), block().train().to(device)
    y0, gx0, state0, draw0 = run(plain, x, dy, False, device=device)
    y1, gx1, state1, draw1 = run(ckpt, x, dy, True, as_module=as_module, device=device)
    numpy.testing.assert_array_equal(y1, y0)
    numpy.testing.assert_array_equal(gx1, gx0)
    for (name, p0), (_, p1) in zip(plain.named_parameters(), ckpt.named_parameters()):
        numpy.testing.assert_array_equal(backend.to_numpy(p1.grad), backend.to_numpy(p0.grad), err_msg=name)
    for key in state0:  # running stats moved once; num_batches_tracked is 1
        numpy.testing.assert_array_equal(state1[key], state0[key], err_msg=key)
    assert int(ckpt[1].num_batches_tracked.numpy()) == 1
    assert draw1 == draw0  # the random stream continues where it would have
    assert (y0 == 0).any()  # Dropout did drop something (same mask both times, since outputs are equal)


def test_parameters_get_gradients_when_no_input_requires_grad():
    model = block().train()
    y = cubn.checkpoint(model, cubn.tensor(rand((2, 3, 4, 4))))
    assert y.requires_grad
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_several_tensor_inputs_constants_and_outputs():
    lin = nn.Linear(3, 3).double()

    def fn(a, b, scale, mode):
        h = lin(a) * scale + b
        return (h.relu(), h * b) if mode == "both" else h

    a0, b0 = rand((5, 3), 3, numpy.float64), rand((5, 3), 4, numpy.float64)
    g1, g2 = rand((5, 3), 5, numpy.float64), rand((5, 3), 6, numpy.float64)
    grads = []
    for use in (False, True):
        lin.zero_grad()
        a, b = cubn.tensor(a0, requires_grad=True), cubn.tensor(b0, requires_grad=True)
        out1, out2 = cubn.checkpoint(fn, a, b, 0.5, "both") if use else fn(a, b, 0.5, "both")
        loss = (out1 * cubn.tensor(g1)).sum() + (out2 * cubn.tensor(g2)).sum() + (a * b).sum()
        loss.backward()
        grads.append([a.grad, b.grad, lin.weight.grad, lin.bias.grad])
    for got, want in zip(grads[1], grads[0]):
        numpy.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)

    # the same tensor passed twice, and one input that needs no gradient
    a = cubn.tensor(a0, requires_grad=True)
    c = cubn.tensor(b0)
    cubn.checkpoint(fn, a, a, 2.0, "one").sum().backward()
    lin.zero_grad()
    a_ref = cubn.tensor(a0, requires_grad=True)
    fn(a_ref, a_ref, 2.0, "one").sum().backward()
    numpy.testing.assert_array_equal(a.grad, a_ref.grad)
    out = cubn.checkpoint(fn, a, c, 1.0, "one")
    out.sum().backward()
    assert c.grad is None


def test_batch_renorm_reads_the_running_stats_of_the_first_forward():
    def make():
        cubn.manual_seed(1)
        layer = nn.BatchRenorm2d(3, rmax=1.5, dmax=0.5, momentum=0.5)
        layer.running_mean.data[...] = [1.0, -1.0, 0.5]
        layer.running_std.data[...] = [0.3, 3.0, 1.0]  # r and d clip, and depend on these values
        return layer.train()

    x, dy = rand((6, 3, 2, 2), 8), rand((6, 3, 2, 2), 9)
    results = []
    for use in (False, True):
        layer = make()
        t = cubn.tensor(x, requires_grad=True)
        y = cubn.checkpoint(layer, t) if use else layer(t)
        y.backward(dy)
        results.append((t.grad, layer.weight.grad, layer.bias.grad, layer.running_std.numpy()))
    for got, want in zip(*results[::-1]):
        numpy.testing.assert_array_equal(got, want)


def test_no_grad_mode_second_backward_and_bad_outputs():
    model = block().eval()
    x = cubn.tensor(rand((1, 3, 4, 4)))
    with cubn.no_grad():
        y = cubn.checkpoint(model, x)
    assert not y.requires_grad and y._ctx is None
    y = cubn.checkpoint(model, x)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()
    with pytest.raises(TypeError, match="Tensor"):
        cubn.checkpoint(lambda t: t.numpy(), x)
    with pytest.raises(TypeError, match="share one floating dtype"):
        cubn.checkpoint(lambda t: (t * 1.0, cubn.tensor(t.data.astype(numpy.float64))), x)
    with pytest.raises(TypeError, match="callable"):
        cubn.checkpoint(3, x)


def test_deepcopied_checkpoint_model_matches_in_a_training_loop():
    """Two SGD steps with and without checkpointing stay bitwise equal (state carried across steps)."""
    base = block()
    models = [copy.deepcopy(base).train(), copy.deepcopy(base).train()]
    xs = [rand((3, 3, 4, 4), s) for s in (10, 11)]
    for x in xs:
        for use, model in zip((False, True), models):
            random.manual_seed(3)
            y = cubn.checkpoint(model, cubn.tensor(x)) if use else model(cubn.tensor(x))
            (y * y).sum().backward()
            for p in model.parameters():
                p.data -= 0.01 * p.grad
            model.zero_grad()
    for (k, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        numpy.testing.assert_array_equal(a, b, err_msg=k)
