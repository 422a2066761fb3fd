"""Where BatchNorm goes in a block, and what ``model.eval()`` changes.

    python examples/bn_placement.py            two short trainings on the digits, then the eval-mode checks

Part 1: conv -> BN -> ReLU or conv -> ReLU -> BN?
    The Batch Norm paper normalizes the pre-activation (conv -> BN -> ReLU); that is what
    ``cubn.models`` and most CNNs do. The other order normalizes what the next convolution actually
    receives. Both are trained here with the same seed, data order and one-cycle schedule on the
    digits. With BN before the ReLU, the next layer gets non-negative inputs, about half of them
    zero, with a positive mean; with BN after the ReLU it gets zero-mean, unit-variance inputs.
    The script prints those input statistics next to the test accuracies. On a task this small
    both orders train well; the point is to see what each feeds the next layer, not a winner.
    (Bias: a convolution right before BN needs none, since BN subtracts the mean and adds its own
    shift; before a ReLU the bias matters, so the second order keeps it.)

Part 2: train mode vs eval mode (on the conv -> BN -> ReLU model).
    In training mode BN normalizes with the statistics of the current batch and nudges its
    running averages towards them; in eval mode it uses the running averages and changes nothing.
    The script shows, on test images:

    * the running statistics of the first BN layer next to one test batch's own statistics;
    * the same image gets the same logits alone and inside a batch in eval mode, but not in train
      mode, where every prediction depends on the other images of its batch;
    * forgetting ``model.eval()`` before inference: with large shuffled batches the batch
      statistics are close to the population's and little is lost, but with small batches of
      similar images (test data that arrives sorted by class) BN removes exactly what the images
      have in common, and accuracy collapses;
    * forgetting it also *changes the model*: the running statistics drift towards the test data.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy

try:
    import cubn
except ImportError:   # run from a checkout without `pip install .`: use the cubn next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import cubn

from cubn import backend, nn, optim
from cubn.data import DataLoader, load_digits
from cubn.nn import functional as F
from cubn.train import evaluate, fit

ORDERS = ("conv-bn-relu", "conv-relu-bn")


def block(cin, cout, order):
    """One 3x3 convolution block in the given order (see the module docstring for the bias)."""
    if order == "conv-bn-relu":
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)]


def cnn(order):
    """small_cnn's shape (32-32-pool-64-64-pool, global average pool, Linear) with blocks in ``order``."""
    return nn.Sequential(*block(1, 32, order), *block(32, 32, order), nn.MaxPool2d(2),
                         *block(32, 64, order), *block(64, 64, order), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def load(device):
    (x_train, y_train), (x_test, y_test) = load_digits("train"), load_digits("test")
    mean, std = x_train.mean(), x_train.std()
    return ((x_train - mean) / std, y_train), ((x_test - mean) / std, y_test)


def train_model(order, data, epochs, device, seed=0, lr=0.1):
    (x_train, y_train), (x_test, y_test) = data
    cubn.manual_seed(seed)
    model = cnn(order).to(device)
    loader = DataLoader(x_train, y_train, 64, shuffle=True, drop_last=True, seed=seed, device=device)
    optimizer = optim.SGD(optim.weight_decay_groups(model, 5e-4), lr=lr, momentum=0.9, nesterov=True)
    scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    fit(model, loader, optimizer, epochs, scheduler=scheduler, scheduler_interval="batch", progress=False)
    return model


def next_conv_input(model, x):
    """Statistics of what the second convolution receives: the output of the first block (3 layers), in eval mode."""
    model.eval()
    with cubn.no_grad():
        h = x
        for layer in list(model)[:3]:
            h = layer(h)
    h = backend.to_numpy(h.data)
    return {"mean": float(h.mean()), "std": float(h.std()), "zeros": float((h == 0).mean()),
            "negative": float((h < 0).mean())}


def accuracy(model, x, y, batch_size, training, device):
    """Test accuracy in batches of ``batch_size`` in the given mode, without touching the running statistics."""
    model.train(training)
    correct = 0
    with cubn.no_grad(), F.no_stats_update():
        for xb, yb in DataLoader(x, y, batch_size, device=device):
            correct += int((model(xb).data.argmax(axis=1) == yb.data).sum())
    model.eval()
    return correct / len(y)


def logits(model, x, training):
    """``model(x)`` in the given mode as a NumPy array; running statistics untouched."""
    model.train(training)
    with cubn.no_grad(), F.no_stats_update():
        out = backend.to_numpy(model(x).data)
    model.eval()
    return out


def eval_mode_demo(model, data, device, log):
    """Part 2 of the module docstring; returns its numbers."""
    (_, _), (x_test, y_test) = data
    out = {}
    bn = model[1]                                              # the first BatchNorm2d
    batch = cubn.tensor(x_test[:64], device=device)
    with cubn.no_grad():
        pre = backend.to_numpy(model[0](batch).data)           # what the first BN layer receives
    log("\nfirst BN layer, channels 0-3: running statistics vs the statistics of one test batch of 64")
    log(f"  running mean {numpy.round(backend.to_numpy(bn.running_mean.data[:4]), 3)}   "
        f"batch mean {numpy.round(pre.mean(axis=(0, 2, 3))[:4], 3)}")
    log(f"  running var  {numpy.round(backend.to_numpy(bn.running_var.data[:4]), 3)}   "
        f"batch var  {numpy.round(pre.var(axis=(0, 2, 3))[:4], 3)}")

    train_logits, eval_logits = logits(model, batch, True), logits(model, batch, False)
    out["train_vs_eval_max_logit_diff"] = float(numpy.abs(train_logits - eval_logits).max())
    out["train_vs_eval_same_prediction"] = float((train_logits.argmax(1) == eval_logits.argmax(1)).mean())
    log(f"\nsame 64 images, train mode vs eval mode: logits differ by up to {out['train_vs_eval_max_logit_diff']:.2f}, "
        f"{100 * out['train_vs_eval_same_prediction']:.0f}% of the predictions agree")

    one = batch[:1]
    for mode, training in (("eval", False), ("train", True)):
        alone, inside = logits(model, one, training)[0], logits(model, batch, training)[0]
        diff = out[f"{mode}_alone_vs_in_batch"] = float(numpy.abs(alone - inside).max())
        log(f"image 0 alone vs inside the batch, {mode:5s} mode: logits differ by {diff:.2e}"
            + (" (float32 rounding: a different batch size sums in a different order)" if not training else ""))

    sort = numpy.argsort(y_test, kind="stable")                # test images arriving class by class
    cases = [("eval mode (model.eval() called), batches of 512", x_test, y_test, 512, False),
             ("train mode (eval() forgotten), shuffled batches of 512", x_test, y_test, 512, True),
             ("train mode (eval() forgotten), batches of 8 sorted by class", x_test[sort], y_test[sort], 8, True)]
    log("\ntest accuracy")
    for name, x, y, batch_size, training in cases:
        out[name] = accuracy(model, x, y, batch_size, training, device)
        log(f"  {name:60s} {out[name]:.4f}")
    out["eval_accuracy"] = out[cases[0][0]]
    out["forgot_eval_shuffled_accuracy"] = out[cases[1][0]]
    out["forgot_eval_sorted_accuracy"] = out[cases[2][0]]

    # the side effect: one inference pass in train mode, with statistics updates on, as a forgotten eval() does
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.train()
    with cubn.no_grad():
        for xb, _ in DataLoader(x_test[sort], y_test[sort], 8, device=device):
            model(xb)
    drift = numpy.abs(backend.to_numpy(bn.running_mean.data) - backend.to_numpy(before["1.running_mean"]))
    out["running_mean_drift"] = drift = float(drift.max())
    out["eval_accuracy_after_drift"] = evaluate(model, DataLoader(x_test, y_test, 512, device=device))[1]
    log(f"\nafter one forgotten-eval pass over the sorted test batches the first BN layer's running mean moved by up "
        f"to {drift:.3f}, and eval-mode accuracy went from {out['eval_accuracy']:.4f} to "
        f"{out['eval_accuracy_after_drift']:.4f}")
    model.load_state_dict(before)
    return out


def main(quick=False, epochs=None, device=None, log=print):
    """Part 1 and part 2; returns {"accuracy": {order: test acc}, "next_conv_input": {order: stats}, "eval": {...}}.

    quick: one epoch per model (what the test runs).
    """
    device = device or ("cuda" if cubn.has_gpu() else "cpu")
    epochs = epochs or (1 if quick else 2)
    data = load(device)
    (_, _), (x_test, y_test) = data
    results = {"accuracy": {}, "next_conv_input": {}}
    models = {}
    log(f"Part 1: two block orders, {epochs} epoch(s) each on the digits, device {device}")
    log(f"{'block':14s} {'test acc':>9s}   what the 2nd conv receives: {'mean':>6s} {'std':>6s} "
        f"{'zeros':>6s} {'< 0':>6s} {'seconds':>8s}")
    for order in ORDERS:
        start = time.perf_counter()
        models[order] = model = train_model(order, data, epochs, device)
        results["accuracy"][order] = evaluate(model, DataLoader(x_test, y_test, 512, device=device))[1]
        s = results["next_conv_input"][order] = next_conv_input(model, cubn.tensor(x_test, device=device))
        log(f"{order:14s} {results['accuracy'][order]:9.4f}   {'':28s} {s['mean']:6.2f} {s['std']:6.2f} "
            f"{s['zeros']:6.2f} {s['negative']:6.2f} {time.perf_counter() - start:8.1f}")
    log("\nPart 2: train mode vs eval mode, on the conv-bn-relu model")
    results["eval"] = eval_mode_demo(models["conv-bn-relu"], data, device, log)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per model (default 2)")
    parser.add_argument("--quick", action="store_true", help="one epoch per model")
    args = parser.parse_args()
    main(quick=args.quick, epochs=args.epochs)
