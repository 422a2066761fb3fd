"""Adam and AdamW (PyTorch's update rules, bias-corrected, optional AMSGrad)."""
from .. import backend
from .optimizer import Optimizer, check_non_negative, check_number


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, arXiv:1412.6980) as ``torch.optim.Adam`` computes it. At step t, for p with gradient g:

        g = g + weight_decay * p                          (Adam: L2 penalty folded into the gradient)
        p = p * (1 - lr * weight_decay)                   (AdamW instead: decoupled decay, g untouched)
        m = m + (1 - beta1) * (g - m)                     (= beta1 * m + (1 - beta1) * g, torch's lerp)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v); use v_max for v            (amsgrad only)
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (amsgrad).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    def _check_group(self, group):
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        group["betas"] = tuple(check_number(b, f"betas[{i}]", lambda v: 0 <= v < 1, "a number in [0, 1)")
                               for i, b in enumerate(betas))
        group["eps"] = check_non_negative(group["eps"], "eps")
        group["weight_decay"] = check_non_negative(group["weight_decay"], "weight_decay")
        group["amsgrad"] = bool(group["amsgrad"])

    def _update(self, param, grad, state, group):
        xp = backend.get_array_module(param)
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = xp.zeros_like(param), xp.zeros_like(param)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(param)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if wd and self.decoupled_weight_decay:
            param *= 1 - lr * wd
        elif wd:
            grad = grad + wd * param
        m += (1 - beta1) * (grad - m)
        v *= beta2
        v += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            v = xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        denom = xp.sqrt(v) / (1 - beta2 ** t) ** 0.5 + group["eps"]
        param -= lr / (1 - beta1 ** t) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, arXiv:1711.05101), as ``torch.optim.AdamW``:
    each step first shrinks p by ``1 - lr * weight_decay``, then takes the Adam step without any L2 term.
    Default ``weight_decay=1e-2``. Exempt norm parameters and biases with ``weight_decay_groups``.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
