"""The ``cubn`` command: the README's main job, resume, info, and clear errors for bad arguments."""
import csv
import json
import subprocess
import sys

import pytest

import cubn
from cubn import cli


def test_default_train_reaches_the_bar(tmp_path, capsys):
    """`cubn train` with no arguments: a small BN CNN on the shipped digits, >= 97% test accuracy."""
    assert cli.main(["train", "--out", str(tmp_path), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rows) == 10 and rows[-1]["val_accuracy"] >= 0.97
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["val_accuracy"]) for r in table] == [r["val_accuracy"] for r in rows]
    for name in ("checkpoint.npz", "model.npz"):
        assert (tmp_path / name).stat().st_size > 0
    pytest.importorskip("matplotlib")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "cnn (norm=bn" in out and "test accuracy" in out


def test_resume_continues_the_run(tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed with --resume writes the uninterrupted run's metrics."""
    common = ["train", "--model", "mlp", "--norm", "gn", "--epochs", "3", "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    real_fit = cli.train.fit

    def stopped_after_one_epoch(*args, on_epoch_end, **kwargs):
        def stop(epoch, history):
            on_epoch_end(epoch, history)
            raise KeyboardInterrupt
        return real_fit(*args, on_epoch_end=stop, **kwargs)

    out = tmp_path / "stopped"
    monkeypatch.setattr(cli.train, "fit", stopped_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*common, "--out", str(out)])
    monkeypatch.setattr(cli.train, "fit", real_fit)
    assert len(json.loads((out / "metrics.json").read_text())) == 1
    assert cli.main([*common, "--out", str(out), "--resume", str(out / "checkpoint.npz")]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight]


@pytest.mark.parametrize("args,message", [
    (["--data", "mnist"], "needs a folder"),
    (["--data", "imagenet"], "--data must be"),
    (["--norm", "batch"], "invalid choice"),
    (["--epochs", "0"], "must be an integer >= 1"),
    (["--lr", "-1"], "must be a positive number"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    assert cli.main(["train", "--data", f"mnist:{tmp_path}", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cubn train: error:") and str(tmp_path) in err


def test_info_and_console_entry():
    done = subprocess.run([sys.executable, "-m", "cubn", "info"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cubn 0.1.0" in done.stdout and "numpy" in done.stdout and "GPU" in done.stdout


def test_bare_command_prints_help_and_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "usage: cubn" in out and "train" in out and "info" in out
    assert not (tmp_path / "runs").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"cubn {cubn.__version__}"
