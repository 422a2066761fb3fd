"""README snippets run as written: each is read from README.md, so the text and the test cannot drift apart."""
import pathlib
import re


README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_block_after(marker):
    """The first ```python block after the line containing ``marker`` in README.md."""
    text = README.read_text()
    start = text.index(marker)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, f"no python block after {marker!r} in README.md"
    return block.group(1)


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("## Quickstart"), "README.md (Quickstart)", "exec"), namespace)
    assert set(namespace["state"]) >= {"0.weight", "1.running_mean", "1.running_var"}


def test_training_from_python_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(python_block_after("The same from Python:"), "README.md (the same from Python)", "exec"), namespace)
    history = namespace["history"]
    assert len(history["val_accuracy"]) == 10 and history["val_accuracy"][-1] > 0.95, history["val_accuracy"]
    assert (tmp_path / "run.npz").is_file()


def test_loading_a_saved_model_runs(tmp_path, monkeypatch):
    from cubn import cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--no-progress"]) == 0     # writes runs/latest/model.npz
    namespace = {}
    exec(compile(python_block_after("`cubn eval` scores that file"), "README.md (load_model)", "exec"), namespace)
    assert namespace["accuracy"] > 0.5
