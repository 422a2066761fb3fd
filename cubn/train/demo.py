"""A minimal training demo: a small MLP with BatchNorm on a synthetic problem, on the GPU if one answers.

The whole path (data, model, loss, backward, SGD, eval mode) written out by hand in a few lines;
``cubn.train.fit`` and the ``cubn train`` command do the same for CNNs.
"""
import time

import numpy

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn.data import spirals


def train_spirals(norm=True, lr=0.1, momentum=0.9, epochs=30, batch_size=50, device=None, log=print, seed=0):
    """Train a 16-64-64-3 MLP (BatchNorm1d after each hidden Linear when ``norm``) on 3-class spirals.

    Returns (held-out accuracy, list of training losses).
    """
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    cubn.manual_seed(seed)
    x, y = spirals(300)
    perm = numpy.random.default_rng(1).permutation(len(x))
    x, y = x[perm], y[perm]
    split = 700
    bn = (lambda: [nn.BatchNorm1d(64)]) if norm else (lambda: [])
    model = nn.Sequential([nn.Linear(16, 64), *bn(), nn.ReLU(), nn.Linear(64, 64), *bn(), nn.ReLU(),
                           nn.Linear(64, 3)]).to(device)
    opt = cubn.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    xt, yt = cubn.tensor(x[:split], device=device), cubn.tensor(y[:split], device=device)
    xv, yv = cubn.tensor(x[split:], device=device), y[split:]
    losses, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = numpy.random.default_rng(epoch).permutation(split)
        for i in range(0, split, batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        with cubn.no_grad():
            accuracy = float((model(xv).numpy().argmax(1) == yv).mean())
        if log:
            log(f"epoch {epoch + 1:2d}  loss {numpy.mean(losses[-14:]):.3f}  val acc {accuracy:.3f}")
    if log:
        log(f"device {device}, {time.perf_counter() - start:.1f} s")
    return accuracy, losses
