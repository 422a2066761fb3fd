"""Compile a kernel file for the host: ``g++ -include cuda_host.h``, cached on disk like CuPy's kernel cache.

``build(code, options)`` takes what ``cupy.RawModule`` takes (the source text from
``cubn.cuda.loader.source`` and its options) and returns ``(path of a shared library,
[(kernel name, parameter list as written)])``. The library holds the kernels, one
``cubn_emu_info_<name>`` per kernel (see ``kernel_info.h``) and the runtime
(``runtime.cpp``, compiled once into an object file).

The cache folder is ``$CUBN_EMULATE_CACHE``, else ``$XDG_CACHE_HOME/cubn/emulate``
(``~/.cache/cubn/emulate``); a library is named after a hash of everything that went
into it (sources, headers, flags, compiler version), so an edited kernel compiles anew.
``CUBN_EMULATE_DEBUG=1`` builds with ``-O0 -g`` for stepping through kernels in gdb.
"""
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
HEADERS = ("cuda_host.h", "kernel_info.h")
RUNTIME = "runtime.cpp"
COMMON_FLAGS = ("-std=c++17", "-fPIC", "-U_FORTIFY_SOURCE", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
                "-Wno-attributes")

# extern "C" __global__ [__launch_bounds__(...)] void [__launch_bounds__(...)] name(params): a file's kernels
_BOUNDS = r'(?:__launch_bounds__\s*\(([^)]*)\)\s*)?'
KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+' + _BOUNDS + r'void\s+' + _BOUNDS + r'(\w+)\s*\(([^)]*)\)')
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


class BuildError(RuntimeError):
    """The host compiler rejected a kernel file; the message holds its output (file:line as in kernels/)."""


def compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler found for the kernel emulator (install g++, or set CXX)")
    return cxx


def optimization():
    return ("-O0", "-g3") if os.environ.get("CUBN_EMULATE_DEBUG") == "1" else ("-O2",)


def cache_dir():
    root = os.environ.get("CUBN_EMULATE_CACHE")
    if not root:
        root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "cubn" / "emulate"
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx):
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]


def _run(cmd, what):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"{what} failed:\n{done.stderr.strip()}\n(command: {' '.join(cmd)})")


def _atomic_build(target, cmd_for, what):
    """Run ``cmd_for(temporary path)`` and rename the result to ``target`` (safe for parallel builds)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=target.suffix)
    os.close(fd)
    try:
        _run(cmd_for(tmp), what)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def kernels(code):
    """[(name, launch-bounds expression or None, parameter text)] of the kernels defined in ``code``."""
    return [(m.group(3), m.group(1) or m.group(2), " ".join(m.group(4).split()))
            for m in KERNEL.finditer(COMMENT.sub(" ", code))]


def host_options(options):
    """The NVRTC options the host compiler understands too: -I, -D, -U and -std."""
    return tuple(o for o in options if o.startswith(("-I", "-D", "-U", "-std=")))


def _included_headers(options):
    """The text of every header in the -I folders: an edited common.cuh must rebuild what includes it."""
    texts = []
    for o in options:
        if o.startswith("-I"):
            for p in sorted(pathlib.Path(o[2:]).glob("*.cuh")) + sorted(pathlib.Path(o[2:]).glob("*.h")):
                texts.append(p.read_text(errors="replace"))
    return "".join(texts)


def _runtime_object(cxx, flags):
    source = (HERE / RUNTIME).read_text()
    headers = "".join((HERE / h).read_text() for h in HEADERS)
    target = cache_dir() / f"runtime-{_digest(source, headers, cxx, _compiler_version(cxx), *flags)}.o"
    if not target.exists():
        _atomic_build(target, lambda out: [cxx, *flags, "-c", str(HERE / RUNTIME), "-o", out],
                      "compiling the emulator runtime")
    return target


def build(code, options=()):
    """(shared library path, kernels(code)) for a kernel source text, compiled at most once per content."""
    cxx = compiler()
    flags = (*COMMON_FLAGS, *optimization(), f"-I{HERE}")
    found = kernels(code)
    stubs = "".join(f"CUBN_EMU_KERNEL({name}, {(bounds or '1024').split(',')[0]}, {params})\n"
                    for name, bounds, params in found)
    text = f'{code}\n#line 1 "<cubn emulator stubs>"\n#include "kernel_info.h"\n{stubs}'
    extra = host_options(options)
    runtime = _runtime_object(cxx, flags)
    headers = "".join((HERE / h).read_text() for h in HEADERS)
    target = cache_dir() / f"kernels-{_digest(text, headers, _included_headers(extra), runtime.name, cxx, *flags, *extra)}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            tu = pathlib.Path(tmp) / "kernels.cpp"
            tu.write_text(text)
            _atomic_build(target, lambda out: [cxx, *flags, *extra, "-include", "cuda_host.h", "-shared",
                                               "-Wl,-Bsymbolic", str(tu), str(runtime), "-o", out],
                          "compiling the kernels for the emulator")
    return target, found
