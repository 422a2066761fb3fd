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
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["--lr", "-1"], "argument --lr: expected a positive number"),
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
    assert "cubn 0.1.0" in done.stdout and "numpy" in done.stdout and "GPU" in done.stdout and "CPU norms" in done.stdout


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


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "two"], "argument --epochs: expected an integer >= 1, got 'two'"),
    (["train", "--seed", "x"], "argument --seed: expected an integer, got 'x'"),
    (["train", "--weight-decay", "-1"], "argument --weight-decay: expected a number >= 0, got '-1'"),
    (["train", "--lr", "0"], "argument --lr: expected a positive number, got '0'"),
])
def test_flag_errors_name_the_flag(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "_int" not in err and "_float" not in err, err


def test_path_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "bad.npz").write_text("not a checkpoint")
    for argv, message in [(["--resume", str(tmp_path)], f"--resume {tmp_path}: Is a directory"),
                          (["--resume", str(tmp_path / "missing.npz")], "No such file"),
                          (["--resume", str(tmp_path / "bad.npz")], "not a cubn save file"),
                          (["--out", str(tmp_path / "file")], "is a file, not a folder"),
                          (["--out", str(tmp_path / "file" / "sub")], "Not a directory")]:
        assert cli.main(["train", "--epochs", "1", "--no-progress", "--out", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cubn train: error:") and message in err[0], (argv, err)
        assert not out.exists(), f"{argv} wrote to --out before failing"


def test_resume_continues_the_stored_run_and_refuses_changes(tmp_path, capsys):
    from cubn import serialization
    first = tmp_path / "gn"
    assert cli.main(["train", "--epochs", "2", "--no-progress", "--norm", "gn", "--batch-size", "32", "--lr", "0.05",
                     "--seed", "3", "--out", str(first)]) == 0
    ckpt = first / "checkpoint.npz"
    run = serialization.load(ckpt)["meta"]["run"]
    assert run == {"model": "cnn", "norm": "gn", "data": ["digits", None], "batch_size": 32, "lr": 0.05,
                   "optimizer": "sgd", "weight_decay": 5e-4, "seed": 3, "cycles": [2]}, run
    capsys.readouterr()
    out = tmp_path / "bn"
    for argv, message in [(["--norm", "bn"], "--norm bn differs from the resumed run's --norm gn"),
                          (["--lr", "0.1"], "--lr 0.1 differs from the resumed run's --lr 0.05"),
                          (["--epochs", "1"], "--epochs 1: the resumed run has already done 2 epochs"),
                          (["--norm", "bn", "--override"], f"--resume {ckpt}: ")]:   # then the model differs
        assert cli.main(["train", "--no-progress", "--out", str(out), "--resume", str(ckpt), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cubn train: error: ") and message in err and not out.exists(), (argv, err)
    # no options given: the stored ones, and the same run (its two epochs are done)
    assert cli.main(["train", "--no-progress", "--out", str(out), "--resume", str(ckpt)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == json.loads((first / "metrics.json").read_text())


def test_more_epochs_extend_the_run_with_a_cycle_of_their_own(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "4", "--no-progress", "--out", str(out),
                     "--resume", str(out / "checkpoint.npz")]) == 0
    assert "extending the run from 2 to 4 epochs: epochs 3-4 get a one-cycle schedule of their own" in \
        capsys.readouterr().out
    lrs = [row["lr"] for row in json.loads((out / "metrics.json").read_text())]
    assert len(lrs) == 4 and lrs[2] == pytest.approx(0.1 / 25) and lrs[3] > lrs[2], lrs   # a warm restart
    from cubn import serialization
    assert serialization.load(out / "checkpoint.npz")["meta"]["run"]["cycles"] == [2, 2]



def test_saved_model_scores_what_the_run_reported(tmp_path, capsys):
    """model.npz carries the input standardization: loaded, it scores the run's test accuracy on raw images."""
    from cubn import models, train
    from cubn.data import DataLoader, load_digits
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "2", "--no-progress", "--norm", "gn", "--out", str(out)]) == 0
    reported = json.loads((out / "metrics.json").read_text())[-1]["val_accuracy"]
    model, prepare = models.load_model(out / "model.npz")
    x, y = load_digits("test")
    assert not model.training
    _, accuracy = train.evaluate(model, DataLoader(prepare(x), y, 512))
    assert accuracy == pytest.approx(reported, abs=1e-6) and accuracy > 0.5
    capsys.readouterr()
    assert cli.main(["eval", "--model-file", str(out / "model.npz")]) == 0
    assert f"accuracy {reported:.4f}" in capsys.readouterr().out


def test_eval_refuses_what_is_not_a_model_file(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model-file", str(tmp_path / "checkpoint.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cubn eval: error: --model-file") and "not a cubn model file" in err, err
