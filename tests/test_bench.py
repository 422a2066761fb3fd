"""The benchmark harness (cubn/bench) on the CPU: case table, byte formulas, the run loop, the reports, the CLI.

The GPU timing itself (CupyDevice) needs a GPU; everything around it runs here
through ``CPUDevice``, which times with the host clock and takes the NumPy twins
as its "kernels", so a run goes through the same setup, calls, checks and
report writing as on a GPU.
"""
import importlib
import json
import subprocess
import sys
import time
import types

import numpy
import pytest

from cubn.bench import cuda_version, median, slug
from cubn.bench import norms
from cubn.bench.norms import Case

CNN = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]
IMAGENET = [(32, 64, 112, 112), (32, 256, 56, 56), (64, 512, 7, 7)]
ROWS = [(4096, 768), (8192, 4096)]
# small stand-ins of each op's shapes, for running the cases through the NumPy twins
SMALL = {"bn": (3, 4, 5, 5), "brn": (3, 4, 5, 5), "in": (3, 4, 5, 5), "gn": (2, 64, 3, 3),
         "ln": (6, 10), "rms": (6, 10)}


class CPUDevice:
    """CupyDevice's interface on NumPy: host-clock times, the NumPy twins (or given modules) as kernels."""

    xp = numpy
    torch_device = "cpu"
    copy_bytes = 1 << 20

    def __init__(self, kernels=None):
        self._kernels = kernels or {}

    def kernels(self, family):
        return self._kernels.get(family) or importlib.import_module("cubn.ref." + family)

    def time_ms(self, fn, warmup, reps):
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out

    def wall_ms(self, fn, reps):
        return median(self.time_ms(fn, 0, reps))

    def copy_bandwidth(self, reps):
        src = numpy.ones(self.copy_bytes // 4, numpy.float32)
        dst = numpy.empty_like(src)
        return 2 * src.nbytes / (median(self.time_ms(lambda: numpy.copyto(dst, src), 1, reps)) * 1e-3) / 1e9

    def torch_problem(self, torch):
        return None

    def release(self, torch=None):
        pass

    def info(self):
        return {"gpu": "CPU stand-in", "driver": None, "cuda_driver_api": None, "cuda_runtime": None,
                "cupy": None, "sm_count": None, "l2_bytes": None}


def small(case):
    return Case(case.op, case.phase, SMALL[case.op])


def test_case_table_is_the_issue_list():
    conv = CNN + IMAGENET
    expected = ([("bn", p, s) for p in ("forward", "backward", "inference") for s in conv]
                + [("brn", p, s) for p in ("forward", "backward") for s in conv]
                + [("ln", p, s) for p in ("forward", "backward") for s in ROWS]
                + [("gn", p, s) for p in ("forward", "backward") for s in conv if s[1] % 32 == 0]
                + [("in", p, s) for p in ("forward", "backward") for s in conv]
                + [("rms", p, s) for p in ("forward", "backward") for s in ROWS])
    got = [(c.op, c.phase, c.shape) for c in norms.cases()]
    assert sorted(got) == sorted(expected) and len(got) == len(set(got)) == 60
    assert (32, 256, 56, 56) in [c.shape for c in norms.cases(["gn"])]
    assert (128, 16, 32, 32) not in [c.shape for c in norms.cases(["gn"])]   # 32 groups do not divide 16
    assert {c.op for c in norms.cases(["bn", "rms"])} == {"bn", "rms"}


def test_kernel_views_and_groups():
    assert Case("bn", "forward", (32, 64, 112, 112)).view == (32, 64, 112 * 112)
    assert Case("ln", "forward", (4096, 768)).view == (4096, 768, 1)
    assert Case("rms", "forward", (8192, 4096)).view == (8192, 4096)
    assert [Case(op, "forward", s).groups for op, s in
            [("ln", (4096, 768)), ("gn", (32, 256, 56, 56)), ("in", (128, 16, 32, 32)), ("bn", (128, 16, 32, 32))]] \
        == [1, 32, 16, None]
    assert Case("gn", "forward", (32, 256, 56, 56)).n_stats == 32 * 32
    assert Case("bn", "backward", (32, 256, 56, 56)).function == "batchnorm_backward"


def test_min_bytes_by_hand():
    # bn forward, (128,16,32,32) float32: x read + y written, gamma/beta read, mean/var/rstd written
    E = 128 * 16 * 32 * 32
    assert norms.min_bytes(Case("bn", "forward", (128, 16, 32, 32)), "float32") == 2 * E * 4 + 2 * 16 * 4 + 3 * 16 * 4
    assert norms.min_bytes(Case("bn", "forward", (128, 16, 32, 32)), "float32") == 16_777_536
    # gn backward, (32,256,56,56) float16: dy, x, dx in 2 bytes; gamma, dgamma, dbeta (256) and mean, rstd
    # (32 samples x 32 groups) in float32
    assert norms.min_bytes(Case("gn", "backward", (32, 256, 56, 56)), "float16") == \
        3 * 25_690_112 * 2 + 3 * 256 * 4 + 2 * 1024 * 4 == 154_151_936
    # InstanceNorm is affine=False: nothing to read for gamma/beta
    assert norms.min_bytes(Case("in", "forward", (128, 64, 8, 8)), "float32") == 2 * 524_288 * 4 + 2 * 8192 * 4
    # rms backward (4096, 768) float32: dy, x, dx | gamma, dgamma | rrms
    assert norms.min_bytes(Case("rms", "backward", (4096, 768)), "float32") == \
        3 * 4096 * 768 * 4 + 2 * 768 * 4 + 4096 * 4


@pytest.mark.parametrize("case", norms.cases(), ids=lambda c: c.label)
def test_every_case_calls_the_kernel_api(case):
    """Each case's arguments fit the cubn/ref signature, and its byte formula covers that phase."""
    c = small(case)
    ref = importlib.import_module("cubn.ref." + c.spec.family)
    arrays = norms.make_arrays(c, "float32", numpy)
    assert arrays["x"].shape == c.view and (arrays["x"] != 0).all() and (arrays["dy"] != 0).all()
    out = norms.bind(ref, c.function, norms.kernel_args(c, arrays))()
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape == c.view and first.dtype == numpy.float32
    assert norms.min_bytes(case, "float32") > 2 * numpy.prod(case.shape) * 4


def test_run_end_to_end_on_the_cpu(tmp_path):
    results = norms.run(CPUDevice(), [small(c) for c in norms.cases()], warmup=1, reps=3, copy_reps=2,
                        log=lambda *a: None)
    rows = results["rows"]
    assert len(rows) == 60 and not [r for r in rows if r.get("error")]
    for r in rows:
        assert r["cubn_rel_err"] == 0.0                  # the twin against itself
        assert len(r["cubn_ms_reps"]) == 3 and r["cubn_ms"] > 0 and r["cubn_GBps"] > 0
        assert r["cubn_pct_copy"] == pytest.approx(100 * r["cubn_GBps"] / results["meta"]["copy_GBps"])
        assert r["default"] is True and "torch_ms" not in r
    assert results["meta"]["torch_skipped"] == "torch does not import"
    paths = norms.write_reports(results, tmp_path, log=lambda *a: None)
    assert json.loads(paths[0].read_text())["rows"][0]["function"] == "batchnorm_forward"
    assert paths[0].name == "norms-cpu-stand-in.json" and paths[1].name == "norms-cpu-stand-in.md"


def test_run_flags_a_wrong_kernel_and_goes_on():
    """The check against the NumPy twin rejects a kernel that returns wrong values; a raising kernel is recorded."""
    ref = importlib.import_module("cubn.ref.rmsnorm")
    wrong = types.SimpleNamespace(rmsnorm_forward=lambda x, g, eps: (x.copy(), ref.rmsnorm_forward(x, g, eps)[1]),
                                  rmsnorm_backward=lambda *a: 1 / 0)
    rows = norms.run(CPUDevice({"rmsnorm": wrong}), [small(c) for c in norms.cases(["rms"])],
                     warmup=0, reps=1, copy_reps=1, log=lambda *a: None)["rows"]
    assert [r["phase"] for r in rows] == ["forward", "forward", "backward", "backward"]
    assert "differs from the NumPy twin" in rows[0]["error"] and rows[0]["cubn_rel_err"] > 0.1
    assert rows[2]["error"].startswith("ZeroDivisionError") and "cubn_ms" not in rows[2]


def test_versions_come_from_the_module_table():
    module = types.SimpleNamespace(VERSIONS={"batchnorm_forward": (1, 2)}, DEFAULT_VERSIONS={"batchnorm_forward": 2})
    assert norms.versions_of(module, "batchnorm_forward") == [1, 2]
    assert norms.default_version(module, "batchnorm_forward") == 2
    assert norms.default_version(module, "batchnorm_backward") is None
    assert norms.versions_of(importlib.import_module("cubn.ref.batchnorm"), "batchnorm_forward") == [None]
    calls = []
    module.f = lambda *a, **k: calls.append((a, k))
    norms.bind(module, "f", (1, 2))()
    norms.bind(module, "f", (1, 2), 1)()
    assert calls == [((1, 2), {}), ((1, 2), {"version": 1})]


def test_every_version_is_timed_and_the_default_marked():
    """--versions: one row per listed version, the module's default marked; without it, one default row."""
    ref = importlib.import_module("cubn.ref.rmsnorm")
    seen = []

    def forward(x, gamma, eps, *, version=None):
        seen.append(version)
        return ref.rmsnorm_forward(x, gamma, eps)

    module = types.SimpleNamespace(VERSIONS={"rmsnorm_forward": (1, 2, 3)}, DEFAULT_VERSIONS={"rmsnorm_forward": 2},
                                   rmsnorm_forward=forward)
    case = Case("rms", "forward", SMALL["rms"])
    quiet = dict(warmup=0, reps=1, copy_reps=1, log=lambda *a: None)
    rows = norms.run(CPUDevice({"rmsnorm": module}), [case], all_versions=True, **quiet)["rows"]
    assert [(r["version"], r["default"]) for r in rows] == [(1, False), (2, True), (3, False)]
    assert [norms.version_label(r) for r in rows] == ["v1", "v2 *", "v3"] and set(seen) == {1, 2, 3}
    seen.clear()
    rows = norms.run(CPUDevice({"rmsnorm": module}), [case], **quiet)["rows"]
    assert [(r["version"], r["default"]) for r in rows] == [(2, True)] and set(seen) == {None}


def fake_results():
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "dtype": "float32", "copy_GBps": 3000.0, "warmup": 10, "reps": 100,
            "driver": "580.159.04", "cuda_driver_api": "13.0", "cuda_runtime": "13.0", "cupy": "14.0.0",
            "torch": "2.11.0", "torch_cuda": "13.0", "sm_count": 132, "l2_bytes": 50 << 20, "date": "2026-01-01"}
    rows = [{"op": "bn", "phase": "forward", "shape": [128, 16, 32, 32], "groups": None, "version": "v3",
             "default": True, "min_bytes": 16_777_536, "cubn_ms": 0.01, "torch_ms": 0.02, "note": "",
             "torch_op": "F.batch_norm(training=True)"},
            {"op": "gn", "phase": "backward", "shape": [32, 256, 56, 56], "groups": 32, "version": "v1",
             "default": False, "min_bytes": 154_151_936, "cubn_ms": 0.1, "note": "",
             "torch_error": "RuntimeError: no | pipes"},
            {"op": "brn", "phase": "forward", "shape": [64, 512, 7, 7], "groups": None, "min_bytes": 12_867_584,
             "note": norms.OPS["brn"].note, "error": "setup: MemoryError: "}]
    return {"meta": meta, "rows": [norms.derive(r, meta["copy_GBps"]) for r in rows]}


def test_derived_figures():
    bn, gn, brn = fake_results()["rows"]
    assert bn["cubn_GBps"] == pytest.approx(16_777_536 / 1e-5 / 1e9)           # 1677.75 GB/s
    assert bn["cubn_pct_copy"] == pytest.approx(100 * 1677.7536 / 3000)
    assert bn["speedup"] == pytest.approx(2.0)                                  # torch 0.02 ms / cubn 0.01 ms
    assert "speedup" not in gn and "torch_GBps" not in gn and "cubn_GBps" not in brn


def test_markdown_report_columns_and_values():
    text = norms.markdown(fake_results())
    lines = text.splitlines()
    assert lines[0] == "# Normalization kernels: cubn vs PyTorch on NVIDIA H100 80GB HBM3 (float32)"
    header = next(l for l in lines if l.startswith("| op "))
    assert [c.strip() for c in header.strip("|").split("|")] == list(norms.COLUMNS)
    table = [l for l in lines if l.startswith("| bn ") or l.startswith("| gn ") or l.startswith("| brn ")]
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in table]
    assert len(cells) == 3 and all(len(c) == len(norms.COLUMNS) for c in cells)
    assert cells[0] == ["bn", "forward", "128x16x32x32", "v3 *", "16.78", "0.0100", "1678", "56",
                        "0.0200", "839", "2.00", ""]
    assert cells[1][2] == "32x256x56x56 G=32" and cells[1][3] == "v1" and cells[1][10] == "-"
    assert "PyTorch error: RuntimeError: no / pipes" in cells[1][11]
    assert cells[2][3] == "-" and "no PyTorch Batch Renorm" in cells[2][11] and "cubn error: setup" in cells[2][11]
    assert "3000 GB/s" in text and "580.159.04" in text


def test_json_and_file_names(tmp_path):
    results = fake_results()
    paths = norms.write_reports(results, tmp_path / "out", log=lambda *a: None)
    assert [p.name for p in paths[:2]] == ["norms-nvidia-h100-80gb-hbm3.json", "norms-nvidia-h100-80gb-hbm3.md"]
    back = json.loads(paths[0].read_text())
    assert back["meta"]["gpu"] == "NVIDIA H100 80GB HBM3" and back["meta"]["copy_GBps"] == 3000.0
    assert back["rows"][0]["speedup"] == pytest.approx(2.0) and back["rows"][1]["groups"] == 32
    try:
        import matplotlib  # noqa: F401
        has_matplotlib = True
    except ImportError:
        has_matplotlib = False
    png = tmp_path / "out" / "norms-nvidia-h100-80gb-hbm3.png"
    assert png.exists() == has_matplotlib == (len(paths) == 3)
    if has_matplotlib:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results["meta"].update(dtype="float16", quick=True)
    assert norms.report_stem(results["meta"]) == "norms-nvidia-h100-80gb-hbm3-float16-quick"


def test_slug_and_versions_text():
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("NVIDIA H200") == "nvidia-h200"
    assert slug("  Tesla V100-SXM2-16GB (rev. a1) ") == "tesla-v100-sxm2-16gb-rev-a1"
    assert slug("***") == "unknown-gpu"
    assert cuda_version(12040) == "12.4" and cuda_version(13000) == "13.0"


def test_cli_without_gpu_says_so():
    """`python -m cubn.bench norms` where no GPU answers: exit 2, a clear message, no traceback.

    CuPy is hidden (sys.modules['cupy'] = None makes its import fail), so this
    runs the no-GPU path on every machine, a GPU machine included.
    """
    code = ("import sys, runpy; sys.modules['cupy'] = None; sys.argv = ['cubn.bench', 'norms']; "
            "runpy.run_module('cubn.bench', run_name='__main__', alter_sys=True)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "no CUDA device answers" in p.stderr and "Traceback" not in p.stderr + p.stdout


def test_cli_rejects_bad_arguments():
    p = subprocess.run([sys.executable, "-m", "cubn.bench", "norms", "--ops", "bogus"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "invalid choice" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("case", [c for c in norms.cases() if c.op != "brn" and c.shape == norms.OPS[c.op].shapes[0]],
                         ids=lambda c: c.label)
def test_pytorch_ops_compute_the_same_thing(case):
    """The PyTorch callable of each case computes what the cubn function computes (CPU PyTorch)."""
    torch = pytest.importorskip("torch")
    c = small(case)
    arrays = norms.make_arrays(c, "float32", numpy)
    fn, name, note = norms.torch_op(c, arrays, torch)
    want = norms.bind(importlib.import_module("cubn.ref." + c.spec.family), c.function, norms.kernel_args(c, arrays))()
    got = fn()
    if c.phase == "backward":
        n = len(got)   # PyTorch returns dx, and dgamma, dbeta for the parameters it has
        assert n == {"in": 1, "rms": 2}.get(c.op, 3)
        got, want = [g.numpy().reshape(w.shape) for g, w in zip(got, want)], want[:n]
    else:
        got, want = [got.numpy().reshape(c.view)], [want[0] if isinstance(want, tuple) else want]
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert note == "" and name.startswith(("F.", "autograd.grad of F."))
