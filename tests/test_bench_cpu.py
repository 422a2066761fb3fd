"""``python -m cubn.bench cpu``: the command, its JSON and Markdown reports, and the run without PyTorch."""
import json

import pytest

import cubn.jit
from cubn.bench import cpu
from conftest import run_bench, torch_importable

def bench(*args, hide_torch=False):
    return run_bench(*args, hide=("torch",) if hide_torch else ())


def read_reports(folder, suffix="-quick"):
    [json_path] = folder.glob(f"cpu-*{suffix}.json")
    [md_path] = folder.glob(f"cpu-*{suffix}.md")
    return json.loads(json_path.read_text()), md_path.read_text()


@pytest.mark.parametrize("hide_torch", [False, True], ids=["torch-if-installed", "torch-hidden"])
def test_quick_run_writes_both_reports(tmp_path, hide_torch):
    p = bench("cpu", "--quick", "--reps", "2", "--cases", "step", "bn", "tape", "--out", str(tmp_path),
              hide_torch=hide_torch)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    r, md = read_reports(tmp_path)
    m = r["meta"]
    assert m["benchmark"] == "cpu" and m["reps"] == 2 and m["warmup"] == cpu.QUICK["warmup"] and m["busy"] == 0
    assert m["command"].startswith("python -m cubn.bench cpu --quick")
    assert {row["group"] for row in r["rows"]} == {"step", "bn", "tape"}
    assert len([row for row in r["rows"] if row["group"] == "bn"]) == 3
    torch_ran = torch_importable() and not hide_torch
    for row in r["rows"]:
        for key in ("1 thread", "default threads"):
            c, t = row[key]["cubn"], row[key]["torch"]
            assert c["reps"] == 2 and 0 < c["min_ms"] <= c["median_ms"] <= c["max_ms"]
            if torch_ran:
                assert row[key]["ratio"] == pytest.approx(c["median_ms"] / t["median_ms"])
                q = row[key]["round_ratio"]
                assert 0 < q["p25"] <= q["median"] <= q["p75"]
            else:
                assert t is None and row[key]["ratio"] is None and row[key]["round_ratio"] is None
        assert row["1 thread"]["threads"]["cubn"] == 1
    if not torch_ran:
        assert m["torch"] is None and m["torch_missing"]
        assert "not installed" in md
    ops = {(row["op"], row["phase"]) for row in r["profile"]["rows"]}
    assert {("Conv2d", "forward"), ("Conv2d", "backward"), ("BatchNormTrain", "backward")} <= ops
    assert "Where the time of cubn's main-job step goes" in md and "| small_cnn" in md
    assert ("<= 1.2: " in md) == torch_ran                  # the step's verdict needs a PyTorch figure


def test_the_cpu_path_of_the_norms_is_recorded(tmp_path):
    """With Numba the norms run on the compiled loops; without it (hidden here) on the twins, in -twins reports."""
    for hide, suffix in ((("torch",), "-quick"), (("torch", "numba"), "-twins-quick")):
        out = tmp_path / suffix
        p = run_bench("cpu", "--quick", "--reps", "1", "--cases", "bn", "--out", str(out), hide=hide)
        assert p.returncode == 0, p.stderr
        r, md = read_reports(out, suffix)
        path = r["meta"]["cpu_norms"]
        assert path == ("twins" if "numba" in hide else "loops" if cubn.jit.available() else "twins")
        assert ("compiled loops (cubn/jit" in md) == (path == "loops")


def test_no_torch_flag_and_busy_processes_are_recorded(tmp_path):
    p = bench("cpu", "--quick", "--reps", "1", "--cases", "pool", "--no-torch", "--busy", "1", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    r, md = read_reports(tmp_path, "-busy1-quick")
    assert r["meta"]["torch_missing"] == "--no-torch" and r["meta"]["busy"] == 1
    assert r["profile"] is None and all(row["group"] == "pool" for row in r["rows"])
    assert "1 busy-looping processes ran beside it" in md


@pytest.mark.parametrize("args, message", [(["--reps", "0"], "--reps must be >= 1"),
                                           (["--busy", "-1"], "--busy must be >= 0"),
                                           (["--cases", "nope"], "invalid choice: 'nope'")])
def test_bad_arguments_are_refused_by_name(tmp_path, args, message):
    p = bench("cpu", *args, "--out", str(tmp_path))
    assert p.returncode == 2 and message in p.stderr
    assert not list(tmp_path.iterdir())
