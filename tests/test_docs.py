"""README snippets run as written: each is read from README.md, so the text and the test cannot drift apart.

The python blocks run in order in one namespace, as a reader goes through the page, in a scratch
folder where ``cubn train --epochs 1`` has written ``runs/latest/`` (the block that loads a saved
model reads it). A block that imports torch needs it installed (CI installs it): without torch,
this test stops there and says so.
"""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(path):
    """[(line number, code)] of the ```python blocks of a Markdown file."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def test_every_readme_snippet_runs(tmp_path, monkeypatch):
    from cubn import cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--no-progress"]) == 0     # runs/latest/model.npz for load_model
    namespace = {}
    blocks = python_blocks(README)
    assert len(blocks) >= 10
    for line, code in blocks:
        if "import torch" in code:
            pytest.importorskip("torch", reason=f"README.md:{line} needs torch")
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the python block at README.md:{line} fails: {type(e).__name__}: {e}") from e
    assert set(namespace["state"]) >= {"0.weight", "1.running_mean", "1.running_var"}       # Quickstart
    history = namespace["history"]                                                          # training from Python
    assert len(history["val_accuracy"]) == 10 and history["val_accuracy"][-1] > 0.95, history["val_accuracy"]
    assert namespace["result"].skipped == []                                                # torch import
    assert namespace["accuracy"] > 0.5                                                      # load_model


EXCERPT = "<!-- excerpt: "
DOCS = sorted((README.parent / "docs").glob("*.md"))


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_every_docs_snippet_runs_or_quotes_the_code(page, tmp_path, monkeypatch):
    """A page's python blocks run in order in one namespace; a block under an "excerpt" comment quotes
    a source file instead, and each of its lines must be a line of that file (so it cannot go stale)."""
    monkeypatch.chdir(tmp_path)
    text, namespace = page.read_text(), {}
    for line, code in python_blocks(page):
        before = text.splitlines()[line - 3] if line >= 3 else ""
        if before.startswith(EXCERPT):
            source = README.parent / before[len(EXCERPT):].split(" -->")[0]
            lines = {s.strip() for s in source.read_text().splitlines()}
            stale = [s for s in code.splitlines() if s.strip() and s.strip() not in lines]
            assert not stale, f"{page.name}:{line} quotes lines that {source.name} no longer has: {stale}"
            continue
        if "import torch" in code:
            pytest.importorskip("torch", reason=f"{page.name}:{line} needs torch")
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the python block at {page.name}:{line} fails: {type(e).__name__}: {e}") from e
