"""Differentiable ops (``Function`` subclasses), device-agnostic.

``math`` holds the general array ops networks need; ``norm`` the normalization
Functions, which pick their kernel module per call: ``cubn.cuda`` for CuPy
arrays where it exists, ``cubn.ref`` otherwise. Functions here are pure: they
never touch running statistics (those live in ``cubn.nn``).
"""
from . import activation, conv, math, norm  # noqa: F401
