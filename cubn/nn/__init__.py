"""Modules and the functional API (filled in by the nn work)."""
