"""The CUDA twin of ``cubn/ref``: launchers for the kernels in ``kernels/*.cu``.

Each module here exports the functions of its ``cubn/ref`` namesake with the
same positional signature, plus a keyword-only ``version=`` that selects a
kernel version (None: the default in the module's ``DEFAULT_VERSIONS``).
``loader`` finds and compiles the sources; ``nvrtc`` compiles them without a
GPU for the CI check. Importing this package needs no CuPy; calling a launcher does.
"""
