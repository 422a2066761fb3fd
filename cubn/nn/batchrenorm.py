"""Batch Renormalization layers (Ioffe 2017, arXiv:1702.03275).

Training normalizes with the batch statistics, then corrects towards the
moving ones with r = clip(sigma_B / running_std, 1/rmax, rmax) and
d = clip((mean_B - running_mean) / running_std, -dmax, dmax), held constant
for the gradient. Buffers are the paper's moving mean and moving standard
deviation (``running_std``, which tracks sqrt(biased batch var + eps)),
updated with ``momentum`` (default 0.01, the paper's alpha) in PyTorch's
meaning, or ``decay`` = 1 - momentum. Eval computes
gamma * (x - running_mean) / running_std + beta.

Schedule, as the paper trains: for the first ``warmup_steps`` training steps
rmax=1, dmax=0 (plain BatchNorm), then both relax linearly to their final
values over ``ramp_steps`` steps. The step is ``num_batches_tracked`` (batches
folded into the moving statistics). The schedule itself is state too: the
buffer ``renorm_schedule`` = [rmax, dmax, warmup_steps, ramp_steps] (float64)
is in the state dict, so a checkpoint loaded into a layer built with other
arguments continues the schedule it was saved with.

``rmax`` and ``dmax`` may also be callables ``step -> value``: such a callable
is the whole schedule of its limit (warmup_steps and ramp_steps do not apply
to it), and its value is checked at every step (rmax >= 1, dmax >= 0, finite).
A function cannot be saved in a state dict: its slot in ``renorm_schedule``
holds NaN, meaning "ask this layer's callable". To resume such a run, build
the layer with the same callable, then load; a state with numbers loaded into
a layer built with a callable switches it to the saved numbers.
"""
import math

import numpy

from . import functional as F
from .batchnorm import _NormBase
from .checks import UNSET, check_count


class _BatchRenorm(_NormBase):
    spread_buffer = "running_std"
    default_momentum = 0.01

    def __init__(self, num_features, rmax=3.0, dmax=5.0, eps=1e-5, momentum=UNSET, affine=True,
                 warmup_steps=0, ramp_steps=0, *, decay=None, nonfinite="skip", degenerate="raise"):
        if momentum is None:
            raise ValueError("Batch Renorm needs a momentum in [0, 1] for its moving statistics, got None")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, decay=decay,
                         nonfinite=nonfinite, degenerate=degenerate)
        self.rmax_fn = rmax if callable(rmax) else None
        self.dmax_fn = dmax if callable(dmax) else None
        schedule = [math.nan if callable(rmax) else F.check_rmax(rmax),
                    math.nan if callable(dmax) else F.check_dmax(dmax),
                    check_count(warmup_steps, "warmup_steps", minimum=0),
                    check_count(ramp_steps, "ramp_steps", minimum=0)]
        self.register_buffer("renorm_schedule", numpy.array(schedule, numpy.float64))

    # ---- the schedule, read from the buffer -------------------------------------------------
    def _schedule(self):
        """(final rmax, final dmax, warmup_steps, ramp_steps) as Python numbers (NaN: a callable)."""
        rmax, dmax, warmup, ramp = self.renorm_schedule.data.tolist()
        return rmax, dmax, int(warmup), int(ramp)

    @property
    def rmax(self):
        """The final rmax: a number, or the callable given for it."""
        value = self._schedule()[0]
        return self.rmax_fn if math.isnan(value) and self.rmax_fn is not None else value

    @property
    def dmax(self):
        """The final dmax: a number, or the callable given for it."""
        value = self._schedule()[1]
        return self.dmax_fn if math.isnan(value) and self.dmax_fn is not None else value

    @property
    def warmup_steps(self):
        return self._schedule()[2]

    @property
    def ramp_steps(self):
        return self._schedule()[3]

    def limits(self, step=None):
        """(rmax, dmax) in force at training ``step`` (default: the next one)."""
        rmax, dmax, warmup, ramp = self._schedule()
        step = int(self.num_batches_tracked.data) if step is None else step
        return (self._limit("rmax", rmax, self.rmax_fn, step, warmup, ramp, 1.0, F.check_rmax),
                self._limit("dmax", dmax, self.dmax_fn, step, warmup, ramp, 0.0, F.check_dmax))

    def _limit(self, name, final, fn, step, warmup, ramp, start, check):
        """One limit at ``step``: ``start`` during warm-up, then linear to ``final``; or ``fn(step)``."""
        if math.isnan(final):
            if fn is None:
                raise ValueError(f"{self._who()}: {name} was a callable in the state this layer loaded; callables "
                                 f"are not saved in state dicts, so build the layer with the same {name}= "
                                 f"callable before loading")
            value = fn(step)
            try:
                return check(value)
            except ValueError as e:
                raise ValueError(f"{self._who()}: {name}(step={step}) returned {value!r}; {e}") from None
        if step < warmup:
            return start
        t = 1.0 if ramp == 0 else min(1.0, (step - warmup) / ramp)
        return start + t * (final - start)

    # ---- forward ------------------------------------------------------------------------------
    def _normalize(self, x, batch_stats, update, momentum, mask):
        rmax, dmax = self.limits() if batch_stats else (1.0, 0.0)  # eval and frozen ignore them
        return F._batch_renorm(x, self.running_mean, self.running_std, self.weight, self.bias,
                               training=batch_stats, update=update, rmax=rmax, dmax=dmax, momentum=momentum,
                               eps=self.eps, **self._policy_kwargs())

    def extra_repr(self):
        def shown(limit):
            return getattr(limit, "__name__", repr(limit)) if callable(limit) else limit

        return (f"{self.num_features}, rmax={shown(self.rmax)}, dmax={shown(self.dmax)}, eps={self.eps}, "
                f"{self._average_repr()}, affine={self.affine}, warmup_steps={self.warmup_steps}, "
                f"ramp_steps={self.ramp_steps}{self._policy_repr()}")


class BatchRenorm1d(_BatchRenorm):
    """Batch Renorm over (N, C) or (N, C, L) input."""
    ndims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renorm over (N, C, H, W) input."""
    ndims = (4,)
