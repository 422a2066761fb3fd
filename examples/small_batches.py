"""BatchNorm's weak spot: tiny batches. BN vs GroupNorm vs Batch Renorm at batch sizes 2 to 64.

    python examples/small_batches.py                    writes examples/out/small_batches.png (about 20 s on a CPU)
    python examples/small_batches.py --out /tmp/plots

BatchNorm normalizes each feature with the mean and variance of the current batch while training,
and with running averages of those statistics at test time (eval mode). At batch 2 the batch
statistics are computed from two values per feature: the output of each feature is essentially
+1 for one sample and -1 for the other, whatever the input. The network learns to work with that
very noisy normalization, and at test time it gets something else, the smooth running averages.
Its test accuracy drops, as the Group Normalization paper (Wu & He 2018, figure 1) and the Batch
Renormalization paper (Ioffe 2017) report.

* GroupNorm normalizes each sample over groups of its own features: no batch dimension is
  involved, so training and test compute the same thing and the batch size does not matter to it.
* Batch Renorm trains with the batch statistics but corrects them towards the running ones
  (r = sigma_B / sigma, d = (mu_B - mu) / sigma, clipped to rmax = 3, dmax = 5 after a warm-up):
  the network sees, already in training, the normalization it gets at test time, which removes
  most of the mismatch.

The setting, chosen so that 18 runs fit in well under a minute on a CPU:

* the model is a multilayer perceptron on the 64 pixels of the 8x8 digits (64 -> 128 -> 128 -> 10,
  a norm after each hidden Linear). In an MLP, BatchNorm's statistics come from the batch alone;
  after a convolution they also pool over the H x W positions of each image, which softens the
  effect on images as small as these (a small CNN on the digits loses almost nothing at batch 2);
* every run sees the same number of training samples (2 epochs), so smaller batches take more
  steps, and the learning rate is scaled linearly with the batch size (0.2 x B / 64) as the GN paper
  does; SGD with momentum 0.9 and a cosine schedule;
* Batch Renorm's warm-up (plain BN for the first 10% of steps, then rmax, dmax relaxed over the
  next third) is set relative to each run's length, since the runs have from 44 to 1437 steps.

The table also has a diagnostic column: BN's test accuracy when it is (wrongly) left in training
mode and fed test batches of the same size it trained with. At batch 2 it is worse still: the
prediction for an image then depends on which other image shares its batch.
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

from cubn import nn, optim
from cubn.data import DataLoader, load_digits
from cubn.nn import functional as F
from cubn.train import evaluate

BATCH_SIZES = (2, 4, 8, 16, 32, 64)
NORMS = {"bn": "BatchNorm", "gn": "GroupNorm (8 groups)", "brn": "Batch Renorm"}
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def norm_layer(norm, features, steps):
    if norm == "bn":
        return nn.BatchNorm1d(features)
    if norm == "gn":
        return nn.GroupNorm(8, features)
    return nn.BatchRenorm1d(features, momentum=0.1, warmup_steps=steps // 10, ramp_steps=steps // 3)


def mlp(norm, steps, hidden=128):
    """Flatten -> (Linear -> norm -> ReLU) x 2 -> Linear. No bias before a norm: its shift would cancel it."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden, bias=False), norm_layer(norm, hidden, steps), nn.ReLU(),
        nn.Linear(hidden, hidden, bias=False), norm_layer(norm, hidden, steps), nn.ReLU(),
        nn.Linear(hidden, 10))


def train_one(norm, batch_size, data, samples, seed=0, device="cpu"):
    """Train for ``samples`` training samples at ``batch_size``; returns (trained model, test loader)."""
    (x_train, y_train), (x_test, y_test) = data
    steps = samples // batch_size
    cubn.manual_seed(seed)
    model = mlp(norm, steps).to(device)
    loader = DataLoader(x_train, y_train, batch_size, shuffle=True, drop_last=True, seed=seed, device=device)
    optimizer = optim.SGD(model.parameters(), lr=0.2 * batch_size / 64, momentum=0.9)
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    done = 0
    while done < steps:                      # whole epochs, then part of one
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done == steps:
                break
    return model


def accuracy_in_train_mode(model, x_test, y_test, batch_size, device):
    """Test accuracy with BN left in training mode, in test batches of ``batch_size``; running stats untouched."""
    model.train()
    correct = seen = 0
    with cubn.no_grad(), F.no_stats_update():
        for x, y in DataLoader(x_test, y_test, batch_size, drop_last=True, device=device):
            correct += int((model(x).data.argmax(axis=1) == y.data).sum())
            seen += len(y)
    return correct / seen


def plot(results, batch_sizes, path):
    """Test accuracy against batch size, one line per norm; returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for norm, label in NORMS.items():
        if norm in results:
            ax.plot(batch_sizes, [results[norm][b] for b in batch_sizes], marker="o", label=label)
    if "bn_train_mode" in results:
        ax.plot(batch_sizes, [results["bn_train_mode"][b] for b in batch_sizes], linestyle="--", color="gray",
                marker=".", label="BatchNorm left in train mode at test")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size (same number of training samples for each)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MLP on the 8x8 digits: normalization vs batch size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(quick=False, out=None, batch_sizes=None, device=None, log=print):
    """Run every (norm, batch size) pair, print the table, write the plot.

    Returns {"bn": {batch size: test accuracy}, "gn": ..., "brn": ..., "bn_train_mode": ..., "png": path or None}.
    quick: batch sizes 2 and 16 and one epoch of samples (what the test runs).
    """
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    batch_sizes = tuple(batch_sizes or ((2, 16) if quick else BATCH_SIZES))
    (x_train, y_train), (x_test, y_test) = load_digits("train"), load_digits("test")
    mean, std = x_train.mean(), x_train.std()
    data = (((x_train - mean) / std, y_train), ((x_test - mean) / std, y_test))
    samples = len(y_train) * (1 if quick else 2)
    log(f"MLP on the digits, {samples} training samples per run, device {device}")
    results, start = {norm: {} for norm in NORMS}, time.perf_counter()
    results["bn_train_mode"] = {}
    for batch_size in batch_sizes:
        for norm in NORMS:
            model = train_one(norm, batch_size, data, samples, device=device)
            loader = DataLoader(*data[1], 512, device=device)
            results[norm][batch_size] = evaluate(model, loader)[1]
            if norm == "bn":
                results["bn_train_mode"][batch_size] = accuracy_in_train_mode(model, *data[1], batch_size, device)

    log("\ntest accuracy (eval mode)")
    log(f"{'batch':>5s}  " + "  ".join(f"{NORMS[n]:>20s}" for n in NORMS) + "  BN, train mode at test")
    for b in batch_sizes:
        log(f"{b:5d}  " + "  ".join(f"{results[n][b]:20.3f}" for n in NORMS) + f"  {results['bn_train_mode'][b]:22.3f}")
    log(f"({time.perf_counter() - start:.1f} s)")

    out = Path(out) if out is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    results["png"] = plot(results, batch_sizes, out / "small_batches.png")
    log(f"wrote {results['png']}" if results["png"] else "matplotlib does not import: no plot (pip install matplotlib)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help=f"folder for small_batches.png (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="batch sizes 2 and 16, one epoch of samples")
    args = parser.parse_args()
    main(quick=args.quick, out=args.out)
