"""Every normalization, one network, one schedule: which trains the small CNN fastest on the digits?

    python examples/compare_norms.py            all seven choices of norm=, 2 epochs each (15-45 s on a CPU)
    python examples/compare_norms.py --epochs 5

The network is ``cubn.models.small_cnn`` (32-32-pool-64-64-pool, global average pool, Linear) and
only its ``norm=`` argument changes between runs: "bn" BatchNorm, "brn" Batch Renorm, "gn"
GroupNorm, "ln" LayerNorm (GroupNorm with one group), "in" InstanceNorm, "rms" RMSNorm over
(C, H, W), "none" nothing. Everything else is held fixed, so the differences come from the
normalization alone:

* the same seed before each model is built (``cubn.manual_seed(0)``), so every run is repeatable,
* the same batches in the same order (the DataLoader's ``seed``),
* the same optimizer and schedule as ``cubn train``: SGD with Nesterov momentum 0.9, weight decay
  5e-4 on the weights (not on norm parameters and biases), a one-cycle learning rate peaking at 0.1.

What to expect (2 epochs, seed 0, on a CPU): bn 0.99 test accuracy, in 0.97, rms 0.87, gn 0.84,
ln 0.79, none 0.34. BatchNorm gets furthest on a short budget: normalizing with statistics of
the whole batch keeps every layer's input at zero mean and unit variance, which is what lets a
learning rate of 0.1 work from the first step. InstanceNorm comes close on these tiny images; the
norms over groups of channels (gn, ln, rms) learn more slowly under this schedule; give them more
epochs and the gap closes (``--epochs 5``: gn 0.99, ln 0.98, rms 0.97, bn 0.99). Without any
normalization the same learning rate is too aggressive for this network: it stays far behind.

brn matches bn exactly at 2 epochs, and that is expected: ``cubn.models`` trains Batch Renorm as
plain BN for its first 100 steps (its warm-up) and 2 epochs are 44 steps. Its corrections r and d
only start to act in longer runs, and matter most at small batches (see small_batches.py).

The seconds column is wall time, which depends on how fast each norm's NumPy (or CUDA)
implementation is, not only on the arithmetic.
"""
import argparse
import sys
import time
from pathlib import Path

try:
    import cubn
except ImportError:   # run from a checkout without `pip install .`: use the cubn next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import cubn

from cubn import models, optim, train
from cubn.data import DataLoader, load_digits

ALL_NORMS = models.NORMS   # ("bn", "brn", "gn", "ln", "in", "rms", "none")


def digits(device):
    """Train and test digits, standardized with the training set's mean and standard deviation."""
    (x_train, y_train), (x_test, y_test) = load_digits("train"), load_digits("test")
    mean, std = x_train.mean(), x_train.std()
    return ((x_train - mean) / std, y_train), ((x_test - mean) / std, y_test)


def train_one(norm, data, epochs, batch_size=64, lr=0.1, seed=0, device="cpu"):
    """Train small_cnn(norm=...) and return a result row: norm, test accuracy, final train loss, seconds."""
    (x_train, y_train), (x_test, y_test) = data
    cubn.manual_seed(seed)
    model = models.small_cnn(in_channels=1, num_classes=10, norm=norm).to(device)
    train_loader = DataLoader(x_train, y_train, batch_size, shuffle=True, drop_last=True, seed=seed, device=device)
    test_loader = DataLoader(x_test, y_test, 512, device=device)
    optimizer = optim.SGD(optim.weight_decay_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader))
    start = time.perf_counter()
    history = train.fit(model, train_loader, optimizer, epochs, val_loader=test_loader, scheduler=scheduler,
                        scheduler_interval="batch", progress=False)
    return {"norm": norm, "test_accuracy": history["val_accuracy"][-1], "train_loss": history["loss"][-1],
            "seconds": time.perf_counter() - start}


def main(quick=False, norms=None, epochs=None, device=None, log=print):
    """Train one model per norm and print the table; returns the rows (a list of dicts).

    quick: bn and none only, one epoch (what the test runs).
    """
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    norms = norms or (("bn", "none") if quick else ALL_NORMS)
    epochs = epochs or (1 if quick else 2)
    data = digits(device)
    log(f"small_cnn on the 8x8 digits ({len(data[0][1])} train / {len(data[1][1])} test images), "
        f"{epochs} epoch(s) of batch 64, one-cycle SGD, device {device}")
    log(f"{'norm':6s} {'test acc':>9s} {'train loss':>11s} {'seconds':>8s}")
    rows = []
    for norm in norms:
        row = train_one(norm, data, epochs, device=device)
        rows.append(row)
        log(f"{row['norm']:6s} {row['test_accuracy']:9.4f} {row['train_loss']:11.4f} {row['seconds']:8.1f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per norm (default 2)")
    parser.add_argument("--norms", nargs="+", choices=ALL_NORMS, help="which norms (default all)")
    parser.add_argument("--quick", action="store_true", help="bn and none, one epoch")
    args = parser.parse_args()
    main(quick=args.quick, norms=args.norms, epochs=args.epochs)
