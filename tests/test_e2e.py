"""End to end: a small network trains on the CPU path."""
import numpy

import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn.data import spirals


def train_mlp(norm, lr, epochs=20, seed=0):
    """An MLP (16-64-64-3) trained with plain SGD on 3-class spirals; returns held-out accuracy."""
    cubn.manual_seed(seed)
    x, y = spirals(300)
    perm = numpy.random.default_rng(1).permutation(len(x))
    x, y = x[perm], y[perm]
    split = 700
    bn = (lambda: [nn.BatchNorm1d(64)]) if norm else (lambda: [])
    model = nn.Sequential([nn.Linear(16, 64), *bn(), nn.ReLU(), nn.Linear(64, 64), *bn(), nn.ReLU(), nn.Linear(64, 3)])
    opt = cubn.optim.SGD(model.parameters(), lr=lr)
    xt, yt = cubn.tensor(x[:split]), cubn.tensor(y[:split])
    losses = []
    for epoch in range(epochs):
        model.train()
        order = numpy.random.default_rng(epoch).permutation(split)
        for i in range(0, split, 50):
            idx = order[i:i + 50]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    with cubn.no_grad():
        accuracy = (model(cubn.tensor(x[split:])).numpy().argmax(1) == y[split:]).mean()
    return accuracy, losses


def test_batchnorm_mlp_trains_at_a_learning_rate_that_breaks_the_plain_mlp():
    acc_bn, losses = train_mlp(norm=True, lr=0.5)
    acc_plain, _ = train_mlp(norm=False, lr=0.5)
    assert numpy.mean(losses[-14:]) < 0.25 * numpy.mean(losses[:14])  # loss falls
    assert acc_bn >= 0.95, acc_bn
    assert acc_plain <= 0.75, acc_plain  # the same MLP without BN at this rate does clearly worse


def test_main_job_runs_and_learns(capsys):
    from cubn.__main__ import main
    accuracy = main(epochs=3, device="cpu")
    assert accuracy > 0.8
    assert "val acc" in capsys.readouterr().out
