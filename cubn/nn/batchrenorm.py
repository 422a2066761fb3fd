"""Batch Renormalization layers (Ioffe 2017, arXiv:1702.03275).

Training normalizes with the batch statistics, then corrects towards the
moving ones with r = clip(sigma_B / running_std, 1/rmax, rmax) and
d = clip((mean_B - running_mean) / running_std, -dmax, dmax), held constant
for the gradient. Buffers are the paper's moving mean and moving standard
deviation (``running_std``, which tracks sqrt(biased batch var + eps)),
updated with ``momentum`` (default 0.01, the paper's alpha) in PyTorch's
meaning. Eval computes gamma * (x - running_mean) / running_std + beta.

Warm-up, as the paper trains: for the first ``warmup_steps`` training steps
rmax=1, dmax=0 (plain BatchNorm), then both relax linearly to their final
values over ``ramp_steps`` steps. The step is ``num_batches_tracked``, kept
in the state dict, so a resumed run continues the schedule.
"""
from . import functional as F
from .batchnorm import _NormBase
from .checks import check_count


class _BatchRenorm(_NormBase):
    spread_buffer = "running_std"

    def __init__(self, num_features, rmax=3.0, dmax=5.0, eps=1e-5, momentum=0.01, affine=True,
                 warmup_steps=0, ramp_steps=0):
        if momentum is None:
            raise ValueError("Batch Renorm needs a momentum in [0, 1] for its moving statistics, got None")
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.rmax, self.dmax = F.check_renorm_limits(rmax, dmax)
        self.warmup_steps = check_count(warmup_steps, "warmup_steps", minimum=0)
        self.ramp_steps = check_count(ramp_steps, "ramp_steps", minimum=0)

    def limits(self, step=None):
        """(rmax, dmax) in force at training ``step`` (default: the next one)."""
        step = int(self.num_batches_tracked.data) if step is None else step
        if step < self.warmup_steps:
            return 1.0, 0.0
        t = 1.0 if self.ramp_steps == 0 else min(1.0, (step - self.warmup_steps) / self.ramp_steps)
        return 1.0 + t * (self.rmax - 1.0), t * self.dmax

    def _normalize(self, x, running, use_batch_stats, momentum):
        rmax, dmax = self.limits()
        return F.batch_renorm(x, self.running_mean, self.running_std, self.weight, self.bias,
                              training=self.training, rmax=rmax, dmax=dmax, momentum=momentum, eps=self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, rmax={self.rmax}, dmax={self.dmax}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, warmup_steps={self.warmup_steps}, "
                f"ramp_steps={self.ramp_steps}")


class BatchRenorm1d(_BatchRenorm):
    """Batch Renorm over (N, C) or (N, C, L) input."""
    ndims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch Renorm over (N, C, H, W) input."""
    ndims = (4,)
