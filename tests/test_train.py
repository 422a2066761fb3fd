"""cubn.train and cubn.serialization: fit, evaluate, checkpoints without pickle, exact resume."""
import os

import numpy
import pytest

import cubn
from cubn import models, nn, optim, serialization, train
from cubn.data import DataLoader, load_digits
from conftest import emulated, gpu

# the GPU half of this file needs only the norm kernels: it also runs on the emulator (conftest.py)
EMULATE_NORM_KERNELS = True


def digits_subset(n=256):
    x, y = load_digits("train")
    return (x[:n] - 0.3) / 0.4, y[:n]


def setup_run(device="cpu", dropout=0.1, seed=0):
    """An MLP with BN and Dropout, SGD + OneCycle, shuffled loader: every piece of state a resume needs."""
    cubn.manual_seed(seed)
    x, y = digits_subset()
    model = models.MLP(64, 10, hidden=(32,), norm="bn", dropout=dropout).to(device)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=4 * 8)
    loader = DataLoader(x, y, 32, shuffle=True, seed=3, device=device)
    val = DataLoader(x[:64], y[:64], 64, device=device)
    return model, opt, sched, loader, val


def states_equal(a, b):
    return a.keys() == b.keys() and all(numpy.array_equal(cubn.backend.to_numpy(a[k]), cubn.backend.to_numpy(b[k]))
                                        for k in a)


def test_fit_history_and_learning():
    model, opt, sched, loader, val = setup_run(dropout=0.0)
    history = train.fit(model, loader, opt, 4, val, sched, scheduler_interval="batch", progress=False)
    assert list(history) == list(train.HISTORY_KEYS)
    assert history["epoch"] == [1, 2, 3, 4] and len(history["val_accuracy"]) == 4
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    assert model.training  # fit leaves the model in training mode; evaluate restored it
    assert sched.last_epoch == 4 * 8
    loss, acc = train.evaluate(model, val)
    assert (loss, acc) == (history["val_loss"][-1], history["val_accuracy"][-1])


def test_progress_bar_runs(capsys):
    model, opt, _, loader, _ = setup_run()
    train.fit(model, loader, opt, 1, progress=True)
    assert "epoch 1/1" in capsys.readouterr().err


def test_resume_equals_uninterrupted(tmp_path):
    """2 epochs, checkpoint, then a fresh process-like setup resumes to 4: bitwise the 4-epoch run."""
    model, opt, sched, loader, val = setup_run()
    full = train.fit(model, loader, opt, 4, val, sched, scheduler_interval="batch", progress=False)
    want = model.state_dict()

    path = tmp_path / "ck.npz"
    model, opt, sched, loader, val = setup_run()
    train.fit(model, loader, opt, 2, val, sched, scheduler_interval="batch", checkpoint=path, progress=False)
    cubn.manual_seed(12345)  # the resume must restore the random state itself
    model, opt, sched, loader, val = setup_run(seed=99)  # different init: all of it comes from the checkpoint
    resumed = train.fit(model, loader, opt, 4, val, sched, scheduler_interval="batch", resume=path, progress=False)
    assert states_equal(model.state_dict(), want)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed[key] == full[key], key


def test_checkpoint_round_trip(tmp_path):
    model, opt, sched, loader, val = setup_run()
    train.fit(model, loader, opt, 1, val, sched, scheduler_interval="batch", progress=False)
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, model, opt, sched, {"train": loader}, epoch=1, history={"loss": [1.0]})
    model2, opt2, sched2, loader2, _ = setup_run(seed=5)
    saved = train.load_checkpoint(path, model2, opt2, sched2, {"train": loader2})
    assert saved["epoch"] == 1 and saved["history"] == {"loss": [1.0]}
    assert states_equal(model2.state_dict(), model.state_dict())
    assert loader2.state_dict() == loader.state_dict() and sched2.state_dict() == sched.state_dict()
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert all(states_equal(s1["state"][i], s2["state"][i]) for i in s1["state"])


def test_adam_state_and_tuples_survive(tmp_path):
    model = nn.Linear(3, 2)
    opt = optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(cubn.tensor(numpy.ones((2, 3), numpy.float32))).sum().backward()
    opt.step()
    serialization.save(opt.state_dict(), tmp_path / "adam.npz")
    opt2 = optim.Adam(nn.Linear(3, 2).parameters(), lr=1.0)
    opt2.load_state_dict(serialization.load(tmp_path / "adam.npz"))
    assert opt2.param_groups[0]["lr"] == 1e-3 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)


def test_serialization_values(tmp_path):
    state = {"a": numpy.arange(6, dtype=numpy.float16).reshape(2, 3), "n": None, "flag": True, "name": "x",
             "nested": {0: {"step": 2, "buf": numpy.ones(2)}, 5: [1, 2.5]}, "t": (1, 2), "i64": numpy.int64(7),
             "t0": cubn.tensor(numpy.zeros(2))}
    serialization.save(state, tmp_path / "s.npz")
    got = serialization.load(tmp_path / "s.npz")
    assert got["a"].dtype == numpy.float16 and numpy.array_equal(got["a"], state["a"])
    assert got["n"] is None and got["flag"] is True and got["name"] == "x" and got["t"] == [1, 2]
    assert set(got["nested"]) == {0, 5} and got["nested"][0]["step"] == 2 and got["nested"][5] == [1, 2.5]
    assert got["i64"] == 7 and numpy.array_equal(got["t0"], numpy.zeros(2))


def test_serialization_rejects(tmp_path):
    with pytest.raises(TypeError, match="cannot save a object without pickle"):
        serialization.save({"f": object()}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="all strings or all ints"):
        serialization.save({"a": 1, 2: 3}, tmp_path / "x.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a cubn save file"):
        serialization.load(tmp_path / "text.npz")
    numpy.savez(tmp_path / "plain.npz", a=numpy.ones(2))
    with pytest.raises(ValueError, match="not a file written by cubn.save"):
        serialization.load(tmp_path / "plain.npz")
    numpy.savez(tmp_path / "pickled.npz", __tree__=numpy.array("{}"), a0=numpy.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):  # an object array is refused, never unpickled
        serialization.load(tmp_path / "pickled.npz")
    with pytest.raises(FileNotFoundError):
        serialization.load(tmp_path / "missing.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.npz"
    serialization.save({"v": numpy.ones(3)}, path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(numpy, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        serialization.save({"v": numpy.zeros(3)}, path)
    assert numpy.array_equal(serialization.load(path)["v"], numpy.ones(3))
    assert os.listdir(tmp_path) == ["s.npz"]  # no temporary file left behind


def test_checkpoint_errors(tmp_path):
    model, opt, sched, loader, _ = setup_run()
    path = tmp_path / "ck.npz"
    train.save_checkpoint(path, model, opt, sched, {"train": loader}, epoch=1)
    with pytest.raises(ValueError, match="missing keys"):
        train.load_checkpoint(path, models.MLP(64, 10, hidden=(16, 16)))
    with pytest.raises(ValueError, match="shape"):
        train.load_checkpoint(path, models.MLP(64, 10, hidden=(16,), dropout=0.1))
    with pytest.raises(ValueError, match="saved with an LR schedule"):
        train.load_checkpoint(path, model, opt, None)
    serialization.save({"model": {}}, tmp_path / "other.npz")
    with pytest.raises(ValueError, match="not a cubn training checkpoint"):
        train.load_checkpoint(tmp_path / "other.npz", model)


def test_fit_argument_errors():
    model, opt, _, loader, _ = setup_run()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        train.fit(model, loader, opt, 0)
    with pytest.raises(TypeError, match="optimizer must be a cubn.optim.Optimizer"):
        train.fit(model, loader, None, 1)
    with pytest.raises(TypeError, match="model must be a cubn.nn.Module"):
        train.fit(lambda x: x, loader, opt, 1)
    with pytest.raises(ValueError, match="scheduler_interval"):
        train.fit(model, loader, opt, 1, scheduler_interval="step")


@pytest.mark.parametrize("path", [pytest.param("cuda", marks=gpu), pytest.param("emulate", marks=emulated)])
def test_kernel_path_and_numpy_path_agree_over_first_steps(path, monkeypatch):
    """The same ResNet-20 from the same initialization, SGD steps on the same batches, on the NumPy
    twins and on the CUDA kernels (a GPU: 4 steps on 32x32 images; the emulator: 3 steps on 16x16)."""
    x, y = load_digits("train")
    scale, n = (4, 64) if path == "cuda" else (2, 48)
    x = numpy.repeat(numpy.repeat(x[:n], scale, axis=2), scale, axis=3)
    runs = {}
    for run in ("cpu", path):
        if run == "emulate":
            monkeypatch.setenv("CUBN_KERNELS", "emulate")
        device = "cuda" if run == "cuda" else "cpu"
        cubn.manual_seed(0)
        model = models.resnet20(in_channels=1).to(device)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(x, y[:n], 16, shuffle=True, seed=1, device=device)
        losses = []
        for xb, yb in loader:
            loss = cubn.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs[run] = (losses, model.state_dict())
    numpy.testing.assert_allclose(runs[path][0], runs["cpu"][0], rtol=1e-3)
    for key, value in runs["cpu"][1].items():
        numpy.testing.assert_allclose(cubn.backend.to_numpy(runs[path][1][key]), value, rtol=1e-2, atol=1e-3,
                                      err_msg=key)
