"""Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay (PyTorch's update rule)."""
from ..nn.checks import check_fraction


class SGD:
    """For each parameter p with gradient g:

        g = g + weight_decay * p
        buf = momentum * buf + g                 (buf = g on the first step)
        g = g + momentum * buf  if nesterov else buf
        p = p - lr * g
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.momentum = check_fraction(momentum, "momentum")
        if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)
        self.buffers = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self.buffers[i]
                buf = g.copy() if buf is None else buf * self.momentum + g
                self.buffers[i] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= self.lr * g

    def zero_grad(self):
        for p in self.params:
            p.grad = None
