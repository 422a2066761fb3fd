"""Data sets and loading."""
from .synthetic import spirals

__all__ = ["spirals"]
