"""A path that starts with ~ means the home folder wherever cubn takes a path (the README's own examples)."""
import numpy
import pytest

import cubn
from cubn import cli
from cubn.data import load_cifar10, load_mnist


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_save_and_load(home):
    cubn.save({"w": numpy.arange(3.0)}, "~/state.npz")
    assert (home / "state.npz").is_file()
    assert cubn.load("~/state.npz")["w"].tolist() == [0.0, 1.0, 2.0]


def test_cli_paths(home):
    assert cli.parse_data("mnist:~/data/mnist") == ("mnist", str(home / "data" / "mnist"))
    args = cli.build_parser().parse_args(["train", "--out", "~/runs", "--resume", "~/runs/checkpoint.npz"])
    assert (args.out, args.resume) == (str(home / "runs"), str(home / "runs" / "checkpoint.npz"))


@pytest.mark.parametrize("loader", [load_mnist, load_cifar10])
def test_data_folders(home, loader):
    (home / "data").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        loader("~/data")
    assert str(home / "data") in str(info.value) and "~" not in str(info.value)


def test_cli_train_writes_under_home(home):
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--out", "~/run"]) == 0
    assert (home / "run" / "model.npz").is_file() and (home / "run" / "checkpoint.npz").is_file()
