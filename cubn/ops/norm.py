"""Normalization Functions (filled in by the ops work)."""
