"""DistributedDataParallel: one model replica per process, gradients summed over every rank after backward.

    model = nn.SyncBatchNorm.convert_sync_batchnorm(make_model())
    ddp = nn.parallel.DistributedDataParallel(model)          # rank 0's parameters and buffers everywhere
    loss = loss_fn(ddp(x_of_this_rank), y_of_this_rank)
    loss.backward()                                            # ... and here the gradients are reduced
    optimizer.step()                                           # the same step on every rank

What happens, and when:

* At construction, rank 0's parameters and buffers are broadcast to every rank (in place), so the
  replicas start equal whatever each process initialized.
* A training forward with gradients on marks the replica; at the end of the next ``backward()``
  (``cubn.tensor.on_backward_end``) the gradients are all-reduced: parameters are packed, in
  ``named_parameters()`` order, into buckets of up to ``bucket_cap_mb`` of one dtype, one
  ``all_reduce`` each, the same buckets in the same order on every rank. A parameter with no
  gradient on any rank keeps ``grad=None``; one with a gradient on some ranks only counts as zero
  elsewhere. ``cubn.distributed`` sums in rank order, so every rank gets bitwise the same
  gradients and takes bitwise the same optimizer step.
* ``grad_reduction="mean"`` (default, PyTorch's DDP) divides the sum by the number of ranks: with
  each rank's loss the mean over its own samples, that is the gradient of the mean loss over the
  global batch only when every rank has the same number of samples. ``"sum"`` leaves the sum: with
  each rank's loss a sum over its samples divided by the global batch size (or any per-sample sum),
  it is the single-process gradient for any split, uneven or empty.
* ``broadcast_buffers=True`` (PyTorch's default) copies rank 0's buffers to every rank before each
  training forward, so plain BatchNorm layers share rank 0's running statistics; SyncBatchNorm's
  are equal on every rank already. Eval forwards communicate nothing.
* ``no_sync()``: forwards inside it skip the reduction (gradient accumulation); the first backward
  after a forward outside it reduces the accumulated gradients.

With one process (no MPI, or ``mpiexec -n 1``) it is the plain module, and the reduction is the
identity.
"""
import contextlib
import weakref

import numpy

from .. import backend, distributed
from ..tensor import is_grad_enabled, on_backward_end
from .checks import check_choice
from .module import Module

GRAD_REDUCTIONS = ("mean", "sum")


class DistributedDataParallel(Module):
    """``DistributedDataParallel(module, *, grad_reduction="mean", broadcast_buffers=True, bucket_cap_mb=25)``.

    The wrapped model is ``self.module`` (state_dict keys start with ``module.``, as in PyTorch).
    """

    def __init__(self, module, *, grad_reduction="mean", broadcast_buffers=True, bucket_cap_mb=25):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"module must be a cubn.nn.Module, got {type(module).__name__}")
        check_choice(grad_reduction, "grad_reduction", GRAD_REDUCTIONS)
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be a number > 0, got {bucket_cap_mb!r}")
        self.module = module
        self.grad_reduction, self.broadcast_buffers = grad_reduction, bool(broadcast_buffers)
        self.bucket_cap_mb = bucket_cap_mb
        self._pending, self._sync = False, True
        self._broadcast(t for t in list(module.parameters()) + list(module.buffers()))
        # a weak reference: the callback must not keep a dropped replica alive
        ref = weakref.ref(self)
        self._handle = on_backward_end(lambda: ref() is not None and ref()._after_backward())

    def forward(self, *args, **kwargs):
        if self.training and self.broadcast_buffers:
            self._broadcast(self.module.buffers())
        if self.training and self._sync and is_grad_enabled():
            self._pending = True
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Forwards in this block do not reduce gradients at their backward (accumulate them locally)."""
        old, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = old

    def _after_backward(self):
        if self._pending:
            self._pending = False
            self.reduce_gradients()

    def reduce_gradients(self):
        """All-reduce every parameter's gradient now (backward calls this; see the module docstring)."""
        if distributed.world_size() == 1:
            return
        everything = [p for p in self.module.parameters() if p.requires_grad]   # read now: .to() may replace them
        has = distributed.all_reduce(numpy.array([p.grad is not None for p in everything], numpy.uint8), "max")
        size = distributed.world_size()
        for bucket in _buckets(everything, self.bucket_cap_mb * 2**20):
            params = [everything[i] for i in bucket if has[i]]
            if not params:
                continue
            xp = backend.get_array_module(params[0].data)
            flat = xp.concatenate([(xp.zeros_like(p.data) if p.grad is None else p.grad).reshape(-1) for p in params])
            total = distributed.all_reduce(flat)
            if self.grad_reduction == "mean":
                total /= size
            start = 0
            for p in params:
                p.grad = total[start:start + p.data.size].reshape(p.shape)
                start += p.data.size

    def _broadcast(self, tensors):
        if distributed.world_size() == 1:
            return
        for t in tensors:
            if t is not None:
                t.data[...] = distributed.broadcast(t.data, 0)

    def extra_repr(self):
        return f"grad_reduction={self.grad_reduction!r}"


def _buckets(params, cap_bytes):
    """Consecutive parameter indices grouped while they share a dtype and device and fit in ``cap_bytes``."""
    buckets, size, key = [], 0, None
    for i, p in enumerate(params):
        k = (p.dtype, backend.device_of(p.data))
        nbytes = p.data.size * p.data.itemsize
        if not buckets or k != key or size + nbytes > cap_bytes:
            buckets.append([])
            size, key = 0, k
        buckets[-1].append(i)
        size += nbytes
    return buckets
