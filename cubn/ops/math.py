"""General differentiable array ops (filled in by the ops work)."""
