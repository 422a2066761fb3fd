"""Compile a kernel file with NVRTC through ctypes: the check that runs without a GPU or CuPy.

``compile_check(file, defines, arch)`` returns the compiler log and raises
``CompileError`` (whose message names kernels/<file>:line) when compilation
fails. NVRTC comes from the ``nvidia-cuda-nvrtc-cu12`` wheel (in the test
extra) or from a CUDA toolkit on the library path; NVRTC 12 still targets
compute capability 7.0, which CUDA 13 dropped.

    python -m cubn.cuda.nvrtc          # compile every file x dtype x arch, print a summary
"""
import ctypes
import glob
import os
import sys

from . import loader

ARCHS = ("70", "80", "90")
# every kernel file with the defines its launchers compile it with
FILES = ("batchnorm.cu", "batchrenorm.cu", "rownorm.cu")


class CompileError(RuntimeError):
    pass


def find_library():
    """Path of libnvrtc: the pip wheel's copy first, then the system's."""
    candidates = []
    try:
        import nvidia.cuda_nvrtc
        for root in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    candidates += sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")) + ["libnvrtc.so.12", "libnvrtc.so"]
    for path in candidates:
        if "builtins" in path or ".alt." in path:
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError:
            continue
    raise OSError("libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12 (part of cubn[test])")


def compile_check(file, defines, arch):
    """Compile kernels/<file> with ``defines`` for compute_<arch>; returns the log, raises CompileError."""
    lib, _ = find_library()
    text = loader.source(file, defines).encode("ascii")
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), text, file.encode(), 0, None, None) != 0:
        raise CompileError(f"nvrtcCreateProgram failed for {file}")
    try:
        opts = [f"--gpu-architecture=compute_{arch}".encode()] + [o.encode() for o in loader.options()]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if rc != 0:
        raise CompileError(f"{file} {defines} compute_{arch} failed:\n{log}")
    return log


def main():
    failures = 0
    for file in FILES:
        for dtype, defines in loader.DTYPE_DEFINES.items():
            for arch in ARCHS:
                try:
                    compile_check(file, defines, arch)
                    print(f"ok    {file:16s} {dtype.name:8s} compute_{arch}")
                except CompileError as e:
                    failures += 1
                    print(f"FAIL  {e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
