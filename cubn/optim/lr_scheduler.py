"""Learning-rate schedules: StepLR, CosineAnnealingLR, OneCycleLR and LinearWarmup.

Each schedule is a closed form ``lr_at(t)`` of the step count ``t`` and each group's base lr,
so a schedule that is resumed from ``state_dict()`` continues exactly, and the values equal
PyTorch's closed forms (``_get_closed_form_lr``) bit for bit and its recursive ``step()`` to
float64 rounding. Use as in PyTorch: the constructor sets lr = lr_at(0); call ``step()`` once
per optimizer step (or epoch), after ``optimizer.step()``.

The base lr of a group is ``group["initial_lr"]``, set to the group's lr by the first schedule
attached to the optimizer (as PyTorch does), so it travels in the optimizer's state dict too.
One schedule drives an optimizer; to run a warmup and then another schedule, pass that one as
``LinearWarmup(..., after=schedule)`` instead of stepping both.
"""
import math
import numbers

from .optimizer import Optimizer, check_number


class LRScheduler:
    """Base class: subclasses define ``lr_at(t) -> [lr of each group]``.

    ``last_epoch`` (PyTorch's name) counts the ``step()`` calls. ``state_dict()`` is
    ``{"last_epoch": int, "base_lrs": [float, ...]}``.
    """

    def __init__(self, optimizer):
        self.optimizer = _check_optimizer(optimizer, type(self).__name__)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply(self.lr_at(0))

    def lr_at(self, t):
        raise NotImplementedError

    def _apply(self, lrs):
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def step(self):
        lrs = self.lr_at(self.last_epoch + 1)  # first, so an error (OneCycleLR past its end) changes nothing
        self.last_epoch += 1
        self._apply(lrs)

    def get_last_lr(self):
        """The lr of each group as set by the last ``step()`` (or the constructor)."""
        return list(self._last_lr)

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict):
        """Restore ``last_epoch`` and ``base_lrs`` (numbers may be 0-d/1-d arrays) and set each group's lr."""
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"last_epoch", "base_lrs"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}: expected a dict with keys 'last_epoch' and 'base_lrs', got {got}")
        base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"{name}: the state dict has {len(base_lrs)} base lrs, "
                             f"the optimizer has {len(self.optimizer.param_groups)} parameter groups")
        self.base_lrs, self.last_epoch = base_lrs, int(state_dict["last_epoch"])
        self._apply(self.lr_at(self.last_epoch))


def _check_optimizer(optimizer, who):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{who} needs a cubn.optim Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value, name):
    return check_number(value, name, lambda v: v > 0, "a positive number")


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size)  (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _check_int(step_size, "step_size")
        self.gamma = _check_positive(gamma, "gamma")
        super().__init__(optimizer)

    def lr_at(self, t):
        return [base_lr * self.gamma ** (t // self.step_size) for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2  (``CosineAnnealingLR``).

    Past ``T_max`` the cosine goes on (back up over the next T_max steps), as PyTorch's does.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _check_int(T_max, "T_max")
        self.eta_min = check_number(eta_min, "eta_min", lambda v: v >= 0, "a number >= 0")
        super().__init__(optimizer)

    def lr_at(self, t):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2
                for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2018, arXiv:1708.07120), ``torch.optim.lr_scheduler.OneCycleLR``'s
    two-phase form with ``cycle_momentum=False`` (momentum and betas are left alone).

    initial_lr = max_lr / div_factor, min_lr = initial_lr / final_div_factor. Phase 1 anneals
    initial_lr -> max_lr over steps [0, pct_start * total_steps - 1], phase 2 max_lr -> min_lr up to
    step total_steps - 1; 'cos' anneals as end + (start - end) / 2 * (1 + cos(pi * pct)), 'linear'
    as start + (end - start) * pct. The group's lr given to the optimizer is ignored (initial_lr
    replaces it); ``max_lr`` is one number or one per group. Stepping past ``total_steps`` is a ValueError.
    """

    def __init__(self, optimizer, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos", div_factor=25.0,
                 final_div_factor=1e4):
        groups = _check_optimizer(optimizer, "OneCycleLR").param_groups
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * len(groups)
        if len(max_lrs) != len(groups):
            raise ValueError(f"max_lr must be one number or one per parameter group ({len(groups)}), "
                             f"got {len(max_lrs)} values")
        self.max_lrs = [_check_positive(lr, "max_lr") for lr in max_lrs]
        self.total_steps = _check_int(total_steps, "total_steps")
        self.pct_start = check_number(pct_start, "pct_start", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _check_positive(div_factor, "div_factor")
        self.final_div_factor = _check_positive(final_div_factor, "final_div_factor")
        # The last step of each phase, as floats like PyTorch's; a phase of length 0 would divide by 0.
        self.warm_end, self.last = float(self.pct_start * self.total_steps) - 1, self.total_steps - 1
        if self.warm_end in (0, self.last):
            raise ValueError(f"pct_start * total_steps must not be 1 or total_steps (a phase of zero steps), "
                             f"got pct_start={pct_start}, total_steps={total_steps}")
        for group, lr in zip(groups, self.max_lrs):
            group["initial_lr"] = lr / self.div_factor
        super().__init__(optimizer)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr_at(self, t):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times, but total_steps is {self.total_steps}")
        lrs = []
        for initial_lr, max_lr in zip(self.base_lrs, self.max_lrs):
            if t <= self.warm_end:
                lrs.append(self._anneal(initial_lr, max_lr, t / self.warm_end))
            else:
                min_lr = initial_lr / self.final_div_factor
                lrs.append(self._anneal(max_lr, min_lr, (t - self.warm_end) / (self.last - self.warm_end)))
        return lrs


class LinearWarmup(LRScheduler):
    """lr = base_lr * (start_factor + (1 - start_factor) * min(t, warmup_steps) / warmup_steps)
    (``torch.optim.lr_scheduler.LinearLR`` with end_factor=1; default start_factor 1/3 as there).

    With ``after=schedule`` (built on the same optimizer, before this one) the lr from step
    ``warmup_steps`` on is ``schedule.lr_at(t - warmup_steps)``: the second schedule starts at its
    step 0 when the warmup ends, like ``SequentialLR([LinearLR(...), schedule], milestones=[warmup_steps])``.
    Step only the LinearWarmup; ``after`` is read through its closed form, never stepped.
    """

    def __init__(self, optimizer, warmup_steps, start_factor=1.0 / 3, after=None):
        self.warmup_steps = _check_int(warmup_steps, "warmup_steps")
        self.start_factor = check_number(start_factor, "start_factor", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        if after is not None and not (isinstance(after, LRScheduler) and after.optimizer is optimizer):
            raise ValueError(f"after must be a schedule built on the same optimizer, got {after!r}")
        self.after = after
        super().__init__(optimizer)

    def lr_at(self, t):
        if self.after is not None and t >= self.warmup_steps:
            return self.after.lr_at(t - self.warmup_steps)
        factor = self.start_factor + (1.0 - self.start_factor) * min(self.warmup_steps, t) / self.warmup_steps
        return [base_lr * factor for base_lr in self.base_lrs]
