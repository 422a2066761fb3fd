"""``python -m cubn``: train a small MLP with BatchNorm on a synthetic problem, on the GPU if one answers.

This is the placeholder main job until the CNN training CLI lands: it shows
the whole path (data, model, loss, backward, SGD, eval mode) in a few seconds.
"""
import time

import numpy

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn.data import spirals


def main(epochs=30, device=None):
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    cubn.manual_seed(0)
    x, y = spirals(600)
    perm = numpy.random.default_rng(1).permutation(len(x))
    x, y = x[perm], y[perm]
    split = int(0.8 * len(x))
    model = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(),
                          nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3)).to(device)
    opt = cubn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xt, yt = cubn.tensor(x[:split], device=device), cubn.tensor(y[:split], device=device)
    xv, yv = cubn.tensor(x[split:], device=device), y[split:]
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = numpy.random.default_rng(epoch).permutation(split)
        for i in range(0, split, 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with cubn.no_grad():
            acc = (model(xv).numpy().argmax(1) == yv).mean()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  val acc {acc:.3f}")
    print(f"device {device}, {time.perf_counter() - start:.1f} s")
    return acc


if __name__ == "__main__":
    main()
