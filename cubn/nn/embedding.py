"""Embedding: a lookup table of ``num_embeddings`` rows of ``embedding_dim`` values, as ``torch.nn.Embedding``."""
import numpy

from .. import backend, random
from ..tensor import Tensor
from .checks import check_count
from .module import Module, Parameter


class Embedding(Module):
    """``Embedding(num_embeddings, embedding_dim, padding_idx=None)``: ``forward(indices)`` returns the rows
    ``weight[indices]`` (indices: integer tensor or array of any shape; output shape ``indices.shape +
    (embedding_dim,)``). Initialized N(0, 1) from cubn's generator, as PyTorch; the ``padding_idx`` row
    starts at zero and gets no gradient."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        super().__init__()
        self.num_embeddings = check_count(num_embeddings, "num_embeddings")
        self.embedding_dim = check_count(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        weight = random.get_rng().standard_normal((self.num_embeddings, self.embedding_dim)).astype(numpy.float32)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, indices):
        idx = indices.data if isinstance(indices, Tensor) else backend.get_array_module(indices).asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding takes integer indices, got dtype {idx.dtype}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            raise ValueError(f"Embedding({self.num_embeddings}, {self.embedding_dim}): indices must lie in "
                             f"[0, {self.num_embeddings}), got [{int(idx.min())}, {int(idx.max())}]")
        out = self.weight[idx]
        if self.padding_idx is not None and self.weight.requires_grad:
            keep = backend.get_array_module(idx).expand_dims(idx != self.padding_idx, -1)
            out = out * Tensor(keep.astype(self.weight.dtype))   # no gradient reaches the padding row
        return out

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
