"""``python -m cubn.bench train`` on the CPU: the command, the JSON and Markdown reports, the profiler.

The GPU figures (CuPy pool peak, CUDA synchronization) need a GPU; here the same code runs on
the NumPy path with tiny sizes, and a stand-in memory pool checks the peak bookkeeping.
"""
import json
import math
import types

import pytest

from cubn import models
from cubn.bench import train
from cubn.tensor import Function
from conftest import run_bench, torch_importable

def bench(*args, hide_cupy=False):
    return run_bench(*args, hide=("cupy",) if hide_cupy else ())


def test_cli_quick_cpu_run_writes_the_reports(tmp_path):
    p = bench("train", "--device", "cpu", "--quick", "--batch-size", "8", "--steps", "2", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    [json_path] = tmp_path.glob("train-cpu-*-quick.json")
    [md_path] = tmp_path.glob("train-cpu-*-quick.md")
    r = json.loads(json_path.read_text())
    m = r["meta"]
    assert m["benchmark"] == "train" and m["device"] == "cpu" and m["quick"] is True
    assert (m["batch_size"], m["steps"], m["warmup"]) == (8, 2, train.QUICK["warmup"])
    assert m["model"].startswith("resnet20") and "SGD" in m["optimizer"] and m["numpy"] and m["python"]
    assert m["cubn_threads"] >= 1

    c = r["cubn"]
    assert c["params"] == sum(int(p.data.size) for p in models.resnet20(3, 10, "bn").parameters()) == 272_474
    assert len(c["step_ms_reps"]) == 2 and c["step_ms"] > 0
    assert c["images_per_s"] == pytest.approx(8 / (c["step_ms"] * 1e-3))
    assert set(c["phases_ms"]) == {"forward", "backward", "optimizer"} and min(c["phases_ms"].values()) > 0
    assert c["peak_bytes"] is None and "CPU" in c["memory_note"]          # no GPU memory on the CPU
    assert math.isfinite(c["loss_first"]) and math.isfinite(c["loss_last"])
    ops = {(row["op"], row["phase"]) for row in c["profile"]["rows"]}
    assert {("Conv2d", "forward"), ("Conv2d", "backward")} <= ops
    assert 0 < c["profile"]["ops_ms"] <= c["profile"]["step_ms"] * 1.01

    if torch_importable():
        assert r["torch"]["params"] == c["params"] and r["speedup"] > 0
    else:
        assert m["torch_skipped"].startswith("torch not importable") and "torch" not in r

    text = md_path.read_text()
    assert "CPU numbers" in text and "## What limits it (CPU numbers)" in text
    assert "| cubn | 272,474 |" in text and "| Conv2d | backward |" in text


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    p = bench("train", "--device", "cuda", "--out", str(tmp_path), hide_cupy=True)
    assert p.returncode == 2 and "no CUDA device answers" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())


def test_bad_arguments():
    p = bench("train", "--steps", "0")
    assert p.returncode == 2 and "must be an integer >= 1" in p.stderr and "Traceback" not in p.stderr


def test_run_without_torch_and_the_profiler_leaves_no_trace():
    def methods():
        return {cls: (vars(cls).get("forward"), vars(cls).get("backward")) for cls in train._functions()}

    before = methods()
    r = train.run("cpu", batch_size=2, steps=1, warmup=0, phase_steps=1, profile_steps=1, torch=None,
                  log=lambda *a: None)
    assert methods() == before and all(isinstance(cls, type) and issubclass(cls, Function) for cls in before)
    assert r["meta"]["torch_skipped"] == "--no-torch" and "torch" not in r and "speedup" not in r
    assert r["cubn"]["profile"]["steps"] == 1


def test_op_timer_restores_the_methods_after_an_error():
    before = {cls: vars(cls).get("forward") for cls in train._functions()}
    runner = types.SimpleNamespace(sync=lambda: None, sample_memory=lambda: None)
    with pytest.raises(RuntimeError, match="inside"):
        with train.op_timer(runner, {}):
            assert any(vars(cls).get("forward") is not f for cls, f in before.items())
            raise RuntimeError("inside")
    assert {cls: vars(cls).get("forward") for cls in before} == before


def test_cubn_peak_memory_bookkeeping():
    """Peak = the largest pool use sampled, minus the use before the model was built."""
    runner = train.CubnRunner("cpu", train.make_batches(2, n_batches=1))
    used = iter([1000, 5000, 3000])
    pool = types.SimpleNamespace(used_bytes=lambda: next(used), total_bytes=lambda: 8000)
    runner.cupy = types.SimpleNamespace(get_default_memory_pool=lambda: pool)
    runner.base_bytes = 500
    for _ in range(3):
        runner.sample_memory()
    memory = runner.memory()
    assert memory["peak_bytes"] == 4500 and memory["pool_total_bytes"] == 8000
    runner.reset_peak()
    assert runner.peak_bytes == 0


def test_a_diverged_loss_still_makes_valid_json():
    assert train._finite(2.5) == 2.5 and train._finite(float("nan")) == "nan" and train._finite(math.inf) == "inf"


def fake_gpu_results():
    meta = {"benchmark": "train", "model": "resnet20 (norm='bn')", "batch_size": 128, "steps": 50, "warmup": 10,
            "phase_steps": 10, "profile_steps": 3, "optimizer": "SGD(...)", "data": "synthetic", "timing": "t",
            "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "cpu_count": 16, "cupy": "14.0",
            "torch": "2.11.0", "cudnn_benchmark": False, "cudnn_allow_tf32": True}
    phases = {"forward": 2.0, "backward": 4.0, "optimizer": 1.0}
    cubn = {"params": 272_474, "step_ms": 8.0, "images_per_s": 16000.0, "peak_bytes": 300 * 2**20,
            "memory_note": "sampled", "phases_ms": phases,
            "profile": {"steps": 3, "step_ms": 12.0, "ops_ms": 9.0,
                        "rows": [{"op": "Conv2d", "phase": "backward", "ms_per_step": 5.0, "calls_per_step": 21,
                                  "share": 5 / 12}]}}
    torch = dict(cubn, step_ms=4.0, images_per_s=32000.0, peak_bytes=100 * 2**20, memory_note="exact")
    del torch["profile"]
    return {"meta": meta, "cubn": cubn, "torch": torch, "speedup": 0.5}


def test_gpu_report_names_and_markdown(tmp_path):
    results = fake_gpu_results()
    assert train.report_stem(results["meta"]) == "train-nvidia-h100-80gb-hbm3"
    assert train.report_stem(dict(results["meta"], quick=True)) == "train-nvidia-h100-80gb-hbm3-quick"
    assert train.report_stem({"device": "cpu", "cpu": "Intel(R) Xeon(R) Processor"}) == \
        "train-cpu-intel-r-xeon-r-processor"
    text = train.markdown(results)
    assert "CPU numbers" not in text and "on NVIDIA H100 80GB HBM3" in text.splitlines()[0]
    assert "| cubn | 272,474 | 8.00 | 16000.0 | 300.0 | 2.00 | 4.00 | 1.00 |" in text
    assert "| PyTorch | 272,474 | 4.00 | 32000.0 | 100.0 |" in text
    assert "**0.50x**" in text and "cudnn.benchmark=False" in text
    assert "| forward | 2.00 | 29% | 2.00 | 29% |" in text and "| Conv2d | backward | 5.00 | 21 | 41.7% |" in text
    assert "Largest, forward and backward together: Conv2d 42% of the step." in text
    paths = train.write_reports(results, tmp_path)
    assert [p.name for p in paths] == ["train-nvidia-h100-80gb-hbm3.json", "train-nvidia-h100-80gb-hbm3.md"]
    assert json.loads(paths[0].read_text())["speedup"] == 0.5


def test_torch_twin_has_the_same_architecture():
    torch = pytest.importorskip("torch")
    twin = train.torch_resnet20(torch)
    ours = models.resnet20(3, 10, "bn")
    assert sorted(tuple(p.shape) for p in twin.parameters()) == sorted(tuple(p.data.shape) for p in ours.parameters())
    assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    kinds = [type(m).__name__ for m in twin.modules()]
    assert kinds.count("Conv2d") == 21 and kinds.count("BatchNorm2d") == 21
    assert all(m.bias is None for m in twin.modules() if isinstance(m, torch.nn.Conv2d))
