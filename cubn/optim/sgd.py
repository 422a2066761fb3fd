"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay (PyTorch's update rule)."""
from .optimizer import Optimizer, check_non_negative, check_number


class SGD(Optimizer):
    """For each parameter p with gradient g (PyTorch's ``torch.optim.SGD``, ``maximize=False``):

        g = g + weight_decay * p
        buf = g                                  on the first step
        buf = momentum * buf + (1 - dampening) * g   afterwards
        g = g + momentum * buf  if nesterov else buf       (only when momentum > 0)
        p = p - lr * g

    State per parameter: ``momentum_buffer`` (only when momentum > 0).
    """

    state_keys = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))

    def _check_group(self, group):
        group["momentum"] = check_number(group["momentum"], "momentum", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        group["dampening"] = check_number(group["dampening"], "dampening", lambda v: 0 <= v <= 1,
                                          "a number in [0, 1]")
        group["weight_decay"] = check_non_negative(group["weight_decay"], "weight_decay")
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs a momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def _update(self, param, grad, state, group):
        momentum = group["momentum"]
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param -= group["lr"] * grad
