"""SyncBatchNorm: BatchNorm whose training statistics are those of the whole batch across processes.

Each rank holds a slice of the global batch (slices may be uneven, or empty). The layer runs the
phases of the BatchNorm kernel API (``cubn/ref/__init__.py``; the CUDA kernels on the GPU) with
one collective between them (``cubn.ops.norm.PhasedBatchNorm``):

* forward: ``batchnorm_stats`` gives this slice's per-channel (mean, var), sent as (count, mean,
  M2 = var*count) in float64; one ``all_gather`` of that (3, C) array; every rank merges the
  ranks' triples in rank order with Chan's formula in float64, so the global mean and variance are
  exact for any split and bitwise the same on every rank (never a sum / sum-of-squares
  all-reduce, which loses the variance at a large offset); ``batchnorm_normalize`` with them.
* backward: ``batchnorm_param_grads`` gives this slice's (sum dy*xhat, sum dy); one
  ``all_reduce`` of the (2, C) float64 array gives the global sums, and ``batchnorm_dx`` uses
  them with the global count. dgamma and dbeta are this rank's own sums, as PyTorch's
  SyncBatchNorm returns them, for data-parallel training to add up across ranks.

Running statistics are updated from the merged statistics, with BatchNorm's policies (momentum
or decay, estimator, nonfinite, degenerate), decided on the same numbers on every rank. Eval mode
and frozen statistics communicate nothing. ``mask=`` works as in BatchNorm: the count is the
number of valid values over every rank.
"""
from ..ops.norm import PhasedBatchNorm
from . import functional as F
from . import masked as _masked
from .batchnorm import _BatchNorm
from .batchrenorm import _BatchRenorm


class SyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm(num_features, ...)``: BatchNorm's arguments and policies, statistics over every
    rank of ``cubn.distributed`` (one process: exactly BatchNorm). Takes (N, C, *) input, N >= 0."""

    ndims = (2, 3, 4, 5)

    def _normalize(self, x, batch_stats, update, momentum, mask):
        if not batch_stats:
            return super()._normalize(x, batch_stats, update, momentum, mask)
        x, view, eps = F._channel_args(x, 2, dict(weight=self.weight, bias=self.bias), self.eps)
        m = None if mask is None else _masked.channel_mask(mask, x)
        y, fn = PhasedBatchNorm.run(x.reshape(view), self.weight, self.bias, eps=eps, mask=m, sync=True)
        y = y.reshape(x.shape)
        who = self._who()
        if fn.n == 0:                                           # every rank empty: nothing to learn from
            return y, None
        action = F._degenerate_action(int(fn.n), self.degenerate, x, "value per channel (over all ranks)", who,
                                      masked=mask is not None)
        if action == "running":
            return super()._normalize(x, False, False, 0.0, mask)
        if not update or action == "no_update":
            return y, None
        var = fn.var * (fn.n / (fn.n - 1)) if self.running_var_estimator == "unbiased" else fn.var
        return y, F._fold_running([(self.running_mean, fn.mean), (self.running_var, var)], momentum, self.nonfinite, who)

    @classmethod
    def convert_sync_batchnorm(cls, module):
        """A copy-free conversion: every BatchNorm1d/2d/3d in ``module`` (or ``module`` itself) becomes a
        SyncBatchNorm with the same arguments, parameters and buffers; returns the converted module.

        Batch Renorm has no synchronized form here, and keeping it per-rank inside a converted model
        would be a silent difference, so a model that holds one raises ValueError naming the layer.
        Ghost BatchNorm is left as it is: its statistics are per virtual batch, local by design.
        """
        return cls._convert(module, "")

    @classmethod
    def _convert(cls, module, path):
        if isinstance(module, _BatchRenorm):
            raise ValueError(f"convert_sync_batchnorm: {path or 'the module'} is a {type(module).__name__}, and Batch "
                             f"Renorm has no synchronized form in cubn; use BatchNorm (norm 'bn'), or keep one process")
        if isinstance(module, _BatchNorm) and type(module) is not cls and type(module).__name__.startswith("BatchNorm"):
            sync = cls.__new__(cls)
            sync.__dict__.update(module.__dict__)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls._convert(child, f"{path}.{name}" if path else name)
        return module
