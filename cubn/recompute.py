"""Activation checkpointing: ``cubn.checkpoint(fn, *args)`` trades compute for memory.

Normally every op in a forward pass keeps what its backward needs (inputs, masks, normalized
values), so memory grows with depth. ``checkpoint`` runs ``fn(*args)`` under ``no_grad()``,
keeping none of that, and puts ONE node on the tape that holds only ``fn``'s inputs. When
backward reaches that node it runs ``fn`` again, this time recording a small private tape,
backpropagates the incoming gradient through it and hands the input gradients on. A network
split into k checkpointed blocks keeps about 1/k of its activations, for one extra forward.

The recomputation must see exactly what the first forward saw:

* the same inputs: detached copies of the Tensor arguments (sharing their arrays), with the
  originals' ``requires_grad``; their gradients are what the node returns, so nothing is
  counted twice;
* the same random numbers: the global generator (``cubn.random``) is put back to its state
  at the first forward, so Dropout draws the same mask (on CuPy arrays, see ``_Randomness``);
* the same running statistics, left unchanged: it runs inside
  ``cubn.nn.functional.no_stats_update()``, so BatchNorm's running statistics and
  ``num_batches_tracked`` are updated once, in the first forward. When ``fn`` is a Module (or
  a bound method of one), its buffers are also swapped back to their values before the first
  forward for the recomputation, so layers that *read* running statistics in training
  (Batch Renorm's r and d, its warm-up step) compute the same thing again.

Parameters used inside ``fn`` are leaves of the recomputed tape, so its backward accumulates
their gradients directly into ``.grad``. Gradients equal those of the same code run without
checkpointing, bit for bit on the NumPy path.
"""
import contextlib

from . import backend, random
from .tensor import Function, Tensor, is_grad_enabled, no_grad
from .tensor import (
    _state as _grad_mode,  # the flag no_grad() sets; only _grad_enabled() below writes it
)


@contextlib.contextmanager
def _grad_enabled():
    """Record the tape inside the block even if the caller is in ``no_grad()`` (``torch.enable_grad``)."""
    previous = is_grad_enabled()
    _grad_mode.grad_enabled = True
    try:
        yield
    finally:
        _grad_mode.grad_enabled = previous


class _Randomness:
    """Lets the recomputation draw the random numbers the first forward drew.

    NumPy: the global Generator's ``bit_generator.state`` is saved before the first forward and
    put back for the recomputation (then the later state is restored, so code after the
    checkpoint draws what it would have drawn). Which Generator is global is saved too, in
    case ``cubn.manual_seed`` replaces it in between.

    CuPy: Dropout draws from a device RandomState (``cubn.ops.activation._device_rng``) whose
    state cannot be saved, so when any argument lives on the GPU, ``fn`` gets a fresh device
    RandomState seeded from the global Generator, for the first forward and again (same seed)
    for the recomputation. The masks agree between the two, but differ from those of a run
    without checkpointing. (Written for the GPU path; not yet run on a GPU.)
    """

    def __init__(self, args):
        self.device_seed = None
        if any(isinstance(a, Tensor) and backend.is_cupy(a.data) for a in args):
            self.device_seed = int(random.get_rng().integers(2 ** 63))
        self.rng = random.get_rng()
        self.state = self.rng.bit_generator.state

    @contextlib.contextmanager
    def first_forward(self):
        """Around the first forward: only the device stream needs installing (NumPy draws as usual)."""
        with self._device_stream():
            yield

    @contextlib.contextmanager
    def replayed(self):
        """Inside the block, random draws repeat those of the first forward."""
        later_rng = random.get_rng()
        later_state = self.rng.bit_generator.state
        random._rng = self.rng
        self.rng.bit_generator.state = self.state
        try:
            with self._device_stream():
                yield
        finally:
            self.rng.bit_generator.state = later_state
            random._rng = later_rng

    @contextlib.contextmanager
    def _device_stream(self):
        if self.device_seed is None:
            yield
            return
        import cupy

        from .ops import activation
        saved = list(activation._device_rng)
        activation._device_rng[:] = [random.get_rng(), cupy.random.RandomState(self.device_seed)]
        try:
            yield
        finally:
            activation._device_rng[:] = saved


def _owner_module(fn):
    """The Module whose buffers ``fn`` uses, when that can be known: fn itself or a bound method's object."""
    from .nn.module import Module
    owner = fn if isinstance(fn, Module) else getattr(fn, "__self__", None)
    return owner if isinstance(owner, Module) else None


class _Recompute(Function):
    """The one tape node of a checkpointed call; its parents are the Tensor arguments."""

    def __init__(self, fn, args, randomness, buffers, *parents):
        super().__init__(*parents)
        self.fn, self.args, self.randomness, self.buffers = fn, args, randomness, buffers
        self.output_shapes = None  # set for several outputs, packed into one flat vector

    @contextlib.contextmanager
    def _buffers_as_before(self):
        """Swap the owner's buffers back to their pre-forward values for the block (arrays swapped, not copied)."""
        current = [(t, t.data) for t, _ in self.buffers]
        for t, before in self.buffers:
            t.data = before
        try:
            yield
        finally:
            for t, data in current:
                t.data = data

    def backward(self, grad):
        if self.fn is None:
            raise RuntimeError("checkpoint: backward through a checkpointed call a second time")
        from .nn.functional import no_stats_update
        inputs = [Tensor(a.data, requires_grad=a.requires_grad) if isinstance(a, Tensor) else a for a in self.args]
        with self.randomness.replayed(), self._buffers_as_before(), no_stats_update(), _grad_enabled():
            outputs = self.fn(*inputs)
            if self.output_shapes is None:
                root, root_grad = outputs, grad
            else:  # sum_i <out_i, grad_i>: its gradient with respect to each out_i is exactly grad_i
                root, root_grad, start = None, None, 0
                for out, shape in zip(outputs, self.output_shapes):
                    size = out.size
                    if out.requires_grad:
                        term = (out * grad[start:start + size].reshape(shape)).sum()
                        root = term if root is None else root + term
                    start += size
            if root is not None and root.requires_grad:
                root.backward(root_grad)
        self.fn = self.args = self.buffers = None  # free what the node held
        tensors = [t for t in inputs if isinstance(t, Tensor)]
        return tuple(t.grad if needed else None for t, needed in zip(tensors, self.needs_input_grad))


def _outputs_of(result):
    """fn's result as a list of Tensors and whether it was a single Tensor."""
    if isinstance(result, Tensor):
        return [result], True
    if isinstance(result, (tuple, list)) and result and all(isinstance(r, Tensor) for r in result):
        return list(result), False
    raise TypeError(f"checkpoint: fn must return a Tensor or a non-empty tuple/list of Tensors, "
                    f"got {type(result).__name__}")


def checkpoint(fn, *args):
    """``fn(*args)`` without keeping its intermediate values; they are recomputed during backward.

    ``args`` may mix Tensors (gradients flow to those that require them; Tensors nested in
    lists or dicts count as constants) and any other values. ``fn`` returns a Tensor or a
    tuple/list of Tensors; several outputs must share one floating dtype and device. Under
    ``no_grad()`` this is plain ``fn(*args)``. Otherwise every output requires grad, whether or
    not an argument does, because parameters inside ``fn`` may need gradients.

    ``fn`` must compute the same function again at backward time: do not change the model's
    mode or weights between the forward and the backward. See the module docstring for how
    random numbers and running statistics are kept consistent.
    """
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if not is_grad_enabled():
        return fn(*args)
    owner = _owner_module(fn)
    buffers = [(t, t.data.copy()) for t in owner.buffers()] if owner is not None else []
    randomness = _Randomness(args)
    with no_grad(), randomness.first_forward():
        result = fn(*args)
    outputs, single = _outputs_of(result)
    dtypes, devices = {o.dtype for o in outputs}, {o.device for o in outputs}
    if len(dtypes) != 1 or len(devices) != 1:
        raise TypeError(f"checkpoint: several outputs must share one floating dtype and device, got dtypes "
                        f"{sorted(map(str, dtypes))} on {sorted(devices)}")
    if outputs[0].dtype.kind != "f":
        raise TypeError(f"checkpoint: fn's output must be floating point, got dtype {outputs[0].dtype}")
    node = _Recompute(fn, args, randomness, buffers, *[a for a in args if isinstance(a, Tensor)])
    if single:
        out = Tensor(outputs[0].data, requires_grad=True)
        out._ctx = node
        return out
    # The tape gives a node one output, so several outputs travel as one flat vector; each
    # returned Tensor is a (differentiable) slice of it, and their gradients add up there.
    xp = backend.get_array_module(outputs[0].data)
    packed = Tensor(xp.concatenate([o.data.reshape(-1) for o in outputs]), requires_grad=True)
    packed._ctx = node
    node.output_shapes = [o.shape for o in outputs]
    pieces, start = [], 0
    for o in outputs:
        pieces.append(packed[start:start + o.size].reshape(o.shape))
        start += o.size
    return tuple(pieces) if isinstance(result, tuple) else pieces


__all__ = ["checkpoint"]
