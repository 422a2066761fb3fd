"""CUDA kernels without a GPU: they compile, their headers and launchers agree, the loader works.

Runs in CPU-only CI. NVRTC comes from the ``nvidia-cuda-nvrtc-cu12`` wheel in
the test extra; a missing library is a failure, not a skip, so the compile
check cannot silently stop running. CuPy is never imported: the one loader
test that needs it (the module cache) runs against a stand-in ``cupy``.

* every ``kernels/*.cu`` x dtype x compute capability compiles, without warnings
  in cubn's own sources, and ``nvrtc.FILES`` lists exactly the files present;
* each file is ASCII; its header's ``Versions:`` block lists exactly the
  ``extern "C" __global__`` kernels the file defines, each once, each with a
  one-line description; every kernel is launched from some ``cubn/cuda/*.py``;
* the loader's source text, kernel folder, dtype defines, error locations and
  module cache key;
* the kernel API contract (the function list in ``cubn/ref/__init__.py``):
  ``cubn.ref.<m>`` and ``cubn.cuda.<m>`` define exactly those functions with
  the same positional parameters, the CUDA twin adding a keyword-only
  ``version=None``; ``VERSIONS``/``DEFAULT_VERSIONS`` cover them;
* ``kernel_module`` picks the NumPy twin for NumPy arrays.
"""
import importlib
import inspect
import itertools
import pathlib
import re
import sys
import types

import numpy
import pytest

import cubn.jit
import cubn.ref
from cubn.cuda import loader, nvrtc
from cubn.ops.norm import kernel_module
from cubn.ref.common import acc_dtype

REPO = pathlib.Path(__file__).resolve().parent.parent
KERNEL_DIR = loader.kernel_dir()
CU_FILES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
SOURCES = sorted(p.name for p in KERNEL_DIR.iterdir() if p.suffix in (".cu", ".cuh"))
MODULES = ("batchnorm", "batchrenorm", "rownorm", "rmsnorm")


# ---------------------------------------------------------------------------
# The kernel API contract, read from the docstring that states it
# ---------------------------------------------------------------------------
def contract():
    """{module: {function: [positional parameter names]}} as listed in ``cubn/ref/__init__.py``.

    A module line is ``<module>.py  <layout>``; each function line below it is
    indented and reads ``name(param, ...) -> results``.
    """
    out, module = {}, None
    for line in cubn.ref.__doc__.splitlines():
        head = re.match(r"^(\w+)\.py\s", line)
        if head:
            module = out.setdefault(head.group(1), {})
            continue
        fn = re.match(r"^\s+(\w+)\(([^)]*)\)", line)
        if fn and module is not None:
            module[fn.group(1)] = [p.strip() for p in fn.group(2).split(",") if p.strip()]
    return out


CONTRACT = contract()
CONTRACT_FUNCTIONS = [(m, f) for m in MODULES for f in CONTRACT.get(m, {})]


def public_functions(module):
    """Names of the functions a module defines itself (not imported) whose names do not start with _."""
    return {name for name, obj in vars(module).items()
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")}


def test_contract_lists_every_module():
    assert set(CONTRACT) == set(MODULES), f"cubn/ref/__init__.py lists modules {sorted(CONTRACT)}"
    assert all(CONTRACT[m] for m in MODULES), f"a module without functions in the contract: {CONTRACT}"


# ---------------------------------------------------------------------------
# NVRTC compile check
# ---------------------------------------------------------------------------
def nvrtc_library():
    try:
        return nvrtc.find_library()
    except OSError as e:
        pytest.fail(f"cannot run the kernel compile check: {e}")


def test_nvrtc_files_are_the_kernel_files():
    assert set(nvrtc.FILES) == set(CU_FILES), (
        f"cubn/cuda/nvrtc.py FILES {sorted(nvrtc.FILES)} != the .cu files in {KERNEL_DIR}: {CU_FILES}")
    assert len(nvrtc.FILES) == len(set(nvrtc.FILES)), f"a file listed twice in nvrtc.FILES: {nvrtc.FILES}"


@pytest.mark.parametrize("file, dtype, arch", [
    pytest.param(f, d, a, id=f"{f}-{d.name}-compute_{a}")
    for f, d, a in itertools.product(CU_FILES, loader.DTYPE_DEFINES, nvrtc.ARCHS)])
def test_kernel_compiles(file, dtype, arch):
    nvrtc_library()
    try:
        log = nvrtc.compile_check(file, loader.dtype_defines(dtype), arch)
    except nvrtc.CompileError as e:
        pytest.fail(str(e))
    own = [line for line in log.splitlines() if re.match(r"^\S+\(\d+\): warning", line)]
    assert not own, f"{file} ({dtype.name}, compute_{arch}) compiles with warnings:\n" + "\n".join(own)


# ---------------------------------------------------------------------------
# Header lint
# ---------------------------------------------------------------------------
KERNEL_DEF = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^()]*\)\s*)?void\s+'
                        r'(?:__launch_bounds__\s*\([^()]*\)\s*)?([A-Za-z_]\w*)\s*\(')
# a Versions entry: " *   <kernel_name>  <one-line description>", indented past the "*"
VERSION_ENTRY = re.compile(r"^\s*\*\s{2,}([A-Za-z_]\w*)(.*)$")


def without_comments(text):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def defined_kernels(text):
    """Names of the ``extern "C" __global__`` kernels, in order; asserts no other __global__ hides."""
    code = without_comments(text)
    names = KERNEL_DEF.findall(code)
    globals_ = len(re.findall(r"\b__global__\b", code))
    assert globals_ == len(names), (f"{globals_} __global__ functions but {len(names)} read as "
                                    f'`extern "C" __global__ void name(`: {names}')
    return names


def listed_versions(text, file):
    """(name, description) pairs of the header's Versions block, in order."""
    header = re.match(r"\s*/\*(.*?)\*/", text, re.S)
    assert header, f"{file} does not start with a /* ... */ header comment"
    lines = header.group(1).splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*\*\s*Versions:", line)]
    assert len(starts) == 1, f"{file}: expected one ' * Versions:' line in the header, found {len(starts)}"
    first = lines[starts[0]].split("Versions:", 1)[1].split(None, 1)
    entries = [tuple(first) + ("",) * (2 - len(first))] if first else []
    for line in lines[starts[0] + 1:]:
        m = VERSION_ENTRY.match(line)
        if not m:
            break
        entries.append((m.group(1), m.group(2).strip()))
    return entries


@pytest.mark.parametrize("file", CU_FILES)
def test_versions_block_lists_the_defined_kernels(file):
    text = (KERNEL_DIR / file).read_text(encoding="ascii", errors="replace")
    entries = listed_versions(text, file)
    listed = [name for name, _ in entries]
    defined = defined_kernels(text)
    assert defined, f"{file} defines no extern \"C\" __global__ kernel"
    twice = sorted({n for n in listed if listed.count(n) > 1})
    assert not twice, f"{file}: listed more than once in Versions: {twice}"
    assert set(listed) == set(defined), (
        f"{file}: Versions block and kernels disagree; listed, not defined: "
        f"{sorted(set(listed) - set(defined))}; defined, not listed: {sorted(set(defined) - set(listed))} "
        f"(format: ' * Versions:' then one ' *   <kernel_name>  <one-line description>' per kernel)")
    bare = [name for name, description in entries if not description]
    assert not bare, f"{file}: Versions entries without a description: {bare}"


@pytest.mark.parametrize("file", SOURCES)
def test_kernel_source_is_ascii(file):
    data = (KERNEL_DIR / file).read_bytes()
    bad = [(data.count(b"\n", 0, i) + 1, hex(b)) for i, b in enumerate(data) if b > 127]
    assert not bad, f"{file}: non-ASCII bytes (line, byte): {bad[:10]}"


def launcher_text():
    return "\n".join(p.read_text() for p in sorted((REPO / "cubn" / "cuda").glob("*.py")))


@pytest.mark.parametrize("file", CU_FILES)
def test_every_kernel_is_launched(file):
    """Each kernel's name appears in some cubn/cuda/*.py, literally or as an f-string ``<stem>_v{...}``."""
    text = launcher_text()

    def referenced(name):
        versioned = re.match(r"^(.*_v)\d+$", name)
        return (re.search(rf"\b{name}\b", text) is not None
                or (versioned is not None and versioned.group(1) + "{" in text))

    dead = [k for k in defined_kernels((KERNEL_DIR / file).read_text(encoding="ascii", errors="replace"))
            if not referenced(k)]
    assert not dead, f"{file}: kernels no launcher in cubn/cuda/ names: {dead}"


# ---------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------
@pytest.fixture
def kernel_tmp(tmp_path, monkeypatch):
    """A kernel folder in tmp_path holding the real common.cuh; the loader reads from it."""
    (tmp_path / "common.cuh").write_text((KERNEL_DIR / "common.cuh").read_text(encoding="ascii"))
    monkeypatch.setattr(loader, "kernel_dir", lambda: tmp_path)
    return tmp_path


@pytest.mark.parametrize("defines", [None, {"T": "half_t", "ACC": "float"}, {"ACC": "double", "T": "double"}])
def test_source_prepends_defines_and_line(kernel_tmp, defines):
    body = "// first line of the file\nextern \"C\" __global__ void k() {}\n"
    (kernel_tmp / "x.cu").write_text(body)
    lines = loader.source("x.cu", defines).split("\n")
    n = len(defines or {})
    assert set(lines[:n]) == {f"#define {k} {v}" for k, v in (defines or {}).items()}, lines[:n + 1]
    assert lines[n] == '#line 1 "kernels/x.cu"', f"expected the #line directive after the defines: {lines}"
    assert "\n".join(lines[n + 1:]) == body, "the file's text must follow unchanged"


def test_kernel_dir_finds_the_sources():
    """From a checkout, the checkout's kernels/; installed, the wheel's copy, identical to the checkout's."""
    found = loader.kernel_dir()
    if pathlib.Path(loader.__file__).resolve().is_relative_to(REPO / "cubn"):
        assert found == REPO / "kernels", f"cubn imported from {REPO} but kernel_dir() is {found}"
    else:
        assert found == loader._PACKAGE_KERNELS, f"installed cubn, but kernel_dir() is {found}"
        stale = [p.name for p in (REPO / "kernels").iterdir()
                 if p.suffix in (".cu", ".cuh") and p.read_bytes() != (found / p.name).read_bytes()]
        assert not stale, f"the installed kernels differ from the checkout's (reinstall): {stale}"


@pytest.mark.parametrize("in_package, in_checkout, expected", [
    (True, True, "package"), (False, True, "checkout"), (True, False, "package"), (False, False, None)])
def test_kernel_dir_prefers_package_data(tmp_path, monkeypatch, in_package, in_checkout, expected):
    dirs = {"package": tmp_path / "package", "checkout": tmp_path / "checkout"}
    for name, present in (("package", in_package), ("checkout", in_checkout)):
        dirs[name].mkdir()
        if present:
            (dirs[name] / "common.cuh").write_text("#pragma once\n")
    monkeypatch.setattr(loader, "_PACKAGE_KERNELS", dirs["package"])
    monkeypatch.setattr(loader, "_CHECKOUT_KERNELS", dirs["checkout"])
    if expected is None:
        with pytest.raises(FileNotFoundError, match="package.*checkout"):
            loader.kernel_dir()
    else:
        assert loader.kernel_dir() == dirs[expected]


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
def test_dtype_defines(dtype):
    defines = loader.dtype_defines(dtype)
    assert set(defines) == {"T", "ACC"}, defines
    assert defines["T"] == {"float16": "half_t", "float32": "float", "float64": "double"}[numpy.dtype(dtype).name]
    assert defines["ACC"] == {numpy.float32: "float", numpy.float64: "double"}[acc_dtype(dtype)]


@pytest.mark.parametrize("dtype", [numpy.int32, numpy.int64, numpy.bool_, numpy.complex64, numpy.uint8])
def test_dtype_defines_rejects_non_float(dtype):
    with pytest.raises(TypeError, match=numpy.dtype(dtype).name):
        loader.dtype_defines(dtype)


@pytest.mark.parametrize("line", [2, 9])
def test_compile_error_names_file_and_line(kernel_tmp, line):
    nvrtc_library()
    body = ['#include "common.cuh"'] + ["// filler"] * (line - 2) + ["extern \"C\" __global__ void k(T* p) { p[0] = nope; }"]
    (kernel_tmp / "broken.cu").write_text("\n".join(body) + "\n")
    with pytest.raises(nvrtc.CompileError) as info:
        nvrtc.compile_check("broken.cu", loader.dtype_defines(numpy.float32), nvrtc.ARCHS[-1])
    assert f"kernels/broken.cu({line})" in str(info.value), str(info.value)


@pytest.fixture
def fake_cupy(monkeypatch, kernel_tmp):
    """A stand-in ``cupy`` whose RawModule records what it was built from; the loader cache is emptied around it."""
    built = []

    class RawModule:
        def __init__(self, code, options):
            self.code, self.options = code, options
            built.append(self)

        def get_function(self, name):
            return self, name

    device = types.SimpleNamespace(id=0)
    fake = types.SimpleNamespace(RawModule=RawModule, cuda=types.SimpleNamespace(Device=lambda: device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for name in ("a.cu", "b.cu"):
        (kernel_tmp / name).write_text(f"// {name}\n")
    loader._module.cache_clear()
    yield built, device
    loader._module.cache_clear()


F32 = {"T": "float", "ACC": "float"}


@pytest.mark.parametrize("call, new_modules", [
    pytest.param(("a.cu", "k", F32, 0), 0, id="same-call"),
    pytest.param(("a.cu", "other", F32, 0), 0, id="other-kernel-name"),
    pytest.param(("a.cu", "k", {"ACC": "float", "T": "float"}, 0), 0, id="define-order"),
    pytest.param(("a.cu", "k", {"T": "double", "ACC": "double"}, 0), 1, id="other-defines"),
    pytest.param(("b.cu", "k", F32, 0), 1, id="other-file"),
    pytest.param(("a.cu", "k", F32, 1), 1, id="other-device"),
])
def test_get_function_caches_per_file_defines_device(fake_cupy, call, new_modules):
    built, device = fake_cupy
    loader.get_function("a.cu", "k", F32)
    file, name, defines, device.id = call
    module, got_name = loader.get_function(file, name, defines)
    assert len(built) == 1 + new_modules, f"{call} after ('a.cu', 'k', {F32}, 0) built {len(built) - 1} new modules"
    assert got_name == name
    assert module.code == loader.source(file, defines) and module.options == loader.options()


# ---------------------------------------------------------------------------
# Kernel API parity: cubn.ref.<m> and cubn.cuda.<m>
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["cubn.ref", "cubn.cuda"])
@pytest.mark.parametrize("module", MODULES)
def test_module_defines_exactly_the_contract(package, module):
    m = importlib.import_module(f"{package}.{module}")
    assert public_functions(m) == set(CONTRACT[module]), (
        f"{package}.{module} defines {sorted(public_functions(m))}; the contract lists {sorted(CONTRACT[module])} "
        "(helpers must start with _)")


@pytest.mark.parametrize("module, fn", CONTRACT_FUNCTIONS, ids=[f"{m}.{f}" for m, f in CONTRACT_FUNCTIONS])
def test_cuda_signature_matches_ref(module, fn):
    ref = inspect.signature(getattr(importlib.import_module(f"cubn.ref.{module}"), fn))
    cuda = inspect.signature(getattr(importlib.import_module(f"cubn.cuda.{module}"), fn))
    ref_params = list(ref.parameters.values())
    assert [p.name for p in ref_params] == CONTRACT[module][fn], f"cubn.ref.{module}.{fn}{ref} vs the contract"
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in ref_params), str(ref)
    *positional, version = cuda.parameters.values()
    assert positional == ref_params, f"cubn.cuda.{module}.{fn}{cuda} vs cubn.ref.{module}.{fn}{ref}"
    assert (version.name, version.kind, version.default) == ("version", version.KEYWORD_ONLY, None), (
        f"cubn.cuda.{module}.{fn}{cuda}: the last parameter must be keyword-only version=None")


@pytest.mark.parametrize("module", MODULES)
def test_versions_tables(module):
    m = importlib.import_module(f"cubn.cuda.{module}")
    functions = set(CONTRACT[module])
    assert set(m.VERSIONS) == functions, f"VERSIONS keys {sorted(m.VERSIONS)}, expected {sorted(functions)}"
    assert set(m.DEFAULT_VERSIONS) == functions, f"DEFAULT_VERSIONS keys {sorted(m.DEFAULT_VERSIONS)}"
    for fn, versions in m.VERSIONS.items():
        assert isinstance(versions, tuple) and versions, f"VERSIONS[{fn!r}] = {versions!r}: a non-empty tuple"
        assert all(type(v) is int and v >= 1 for v in versions) and len(set(versions)) == len(versions), (
            f"VERSIONS[{fn!r}] = {versions!r}: distinct positive ints")
        assert m.DEFAULT_VERSIONS[fn] in versions, f"DEFAULT_VERSIONS[{fn!r}] not in VERSIONS[{fn!r}] = {versions}"


def test_gpu_suite_covers_the_contract():
    from test_kernels_gpu import PROBLEMS
    assert set(PROBLEMS) == {f for _, f in CONTRACT_FUNCTIONS}, "tests/test_kernels_gpu.py PROBLEMS vs the contract"
    assert all(PROBLEMS[f][0] == m for m, f in CONTRACT_FUNCTIONS), "a PROBLEMS entry names the wrong module"


@pytest.mark.parametrize("module", MODULES)
def test_numpy_input_dispatches_to_ref_without_numba(monkeypatch, module):
    """Without Numba (no compiled loops, cubn/jit) NumPy arrays take the twins; tests/test_jit.py has the rest."""
    monkeypatch.setattr(cubn.jit, "available", lambda: False)
    assert kernel_module(module, numpy.zeros((2, 3, 4), numpy.float32)) is importlib.import_module(f"cubn.ref.{module}")
