"""The ``cubn`` command.

    cubn train [--model cnn|vgg|resnet20|mlp] [--norm bn|brn|gn|ln|in|rms|none]
               [--data digits|mnist:DIR|cifar10:DIR|synthetic] [--epochs N] [--batch-size B] [--lr LR]
               [--optimizer sgd|adam|adamw] [--weight-decay WD] [--device auto|cpu|cuda]
               [--out DIR] [--resume PATH [--override]] [--seed S] [--no-progress] [--threads N]
    cubn eval [--model-file runs/latest/model.npz] [--data digits|mnist:DIR|cifar10:DIR] [--device ...] [--threads N]
    cubn info
    cubn --version

``cubn train`` with no arguments trains a small CNN with BatchNorm on the 8x8 digits shipped
inside cubn (about 99% test accuracy in about 3 seconds on a 2-core CPU, docs/cpu.md). It writes to --out:
metrics.csv and metrics.json (one row per epoch), curves.png (when matplotlib is installed:
``pip install "cubn[plot]"``), checkpoint.npz (after every epoch; ``--resume`` continues from it)
and model.npz (the final weights with the input standardization they were trained with;
``models.load_model`` or ``cubn eval`` read it).
"""
import argparse
import csv
import importlib.metadata
import json
import os
import platform
import sys

import numpy

from . import __version__, backend, distributed, models, nn, optim, random, train
from .cpu import keep_freed_memory, set_num_threads
from .ops.norm import cpu_norm_path
from .serialization import load
from .data import (
    Compose,
    DataLoader,
    DistributedSampler,
    RandomCrop,
    RandomHorizontalFlip,
    load_cifar10,
    load_digits,
    load_mnist,
    synthetic_cifar,
)

# per data set: the defaults that reach the accuracy bar quickly
DATA_DEFAULTS = {
    "digits": {"model": "cnn", "epochs": 10, "batch_size": 64, "lr": 0.1},
    "mnist": {"model": "cnn", "epochs": 5, "batch_size": 128, "lr": 0.1},
    "cifar10": {"model": "resnet20", "epochs": 30, "batch_size": 128, "lr": 0.1},
    "synthetic": {"model": "resnet20", "epochs": 3, "batch_size": 128, "lr": 0.1},
}


def parse_data(spec):
    """'digits' | 'synthetic' | 'mnist:DIR' | 'cifar10:DIR' -> (name, directory or None)."""
    name, _, folder = spec.partition(":")
    if name in ("digits", "synthetic") and not folder:
        return name, None
    if name in ("mnist", "cifar10"):
        if not folder:
            raise argparse.ArgumentTypeError(f"--data {name} needs a folder: --data {name}:DIR")
        return name, os.path.expanduser(folder)
    raise argparse.ArgumentTypeError(f"--data must be digits, synthetic, mnist:DIR or cifar10:DIR, got {spec!r}")


def load_data(name, folder, synthetic_size=(5000, 1000)):
    """((train images, labels), (test images, labels), augmentation or None), images float32 in [0, 1]."""
    if name == "digits":
        return load_digits("train"), load_digits("test"), None
    if name == "mnist":
        return load_mnist(folder, "train"), load_mnist(folder, "test"), None
    if name == "cifar10":
        train_set, test_set = load_cifar10(folder, "train"), load_cifar10(folder, "test")
    else:
        train_set, test_set = synthetic_cifar(synthetic_size[0], seed=0), synthetic_cifar(synthetic_size[1], seed=1)
    return train_set, test_set, Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])


def input_stats(train_images):
    """The training set's per-channel mean and standard deviation, (1, C, 1, 1) each."""
    return train_images.mean(axis=(0, 2, 3), keepdims=True), train_images.std(axis=(0, 2, 3), keepdims=True) + 1e-6


# The options that make a run: stored in its checkpoints, and what --resume continues with
RUN_OPTIONS = {"model": "--model", "norm": "--norm", "data": "--data", "batch_size": "--batch-size", "lr": "--lr",
               "optimizer": "--optimizer", "weight_decay": "--weight-decay", "seed": "--seed"}


class OneCycles(optim.lr_scheduler.LRScheduler):
    """One-cycle schedules back to back, cycle k over ``cycle_steps[k]`` steps, each from max_lr/25 up to
    ``max_lr`` and down. A run extended past its schedule gets a cycle of its own for the extra epochs:
    a warm restart from about where the last cycle's final epoch began, not a jump into the middle of
    a re-planned cycle."""

    def __init__(self, optimizer, max_lr, cycle_steps):
        self.cycles = [optim.lr_scheduler.OneCycleLR(optimizer, max_lr, steps) for steps in cycle_steps]
        self.starts = [sum(cycle_steps[:k]) for k in range(len(cycle_steps))]
        super().__init__(optimizer)

    def lr_at(self, t):
        k = max(i for i, start in enumerate(self.starts) if start <= t)   # cycle k's step 0 is its first
        return self.cycles[k].lr_at(t - self.starts[k])


def run_options(args, log):
    """(options, cycles, epochs) of a run: the given flags, else the data set's defaults; on --resume,
    the options stored in the checkpoint, which a flag given again must equal unless --override."""
    given = {key: getattr(args, key) for key in RUN_OPTIONS}
    given["data"] = None if given["data"] is None else list(given["data"])
    stored, done = None, 0
    if args.resume:
        saved = read_checkpoint(args.resume)
        stored, done = (saved.get("meta") or {}).get("run"), saved["epoch"]
        if stored is None:
            log(f"note: {args.resume} holds no run options (an older cubn): using the options given now")
    if stored is not None:
        for key, flag in RUN_OPTIONS.items():
            if given[key] is not None and given[key] != stored[key] and not args.override:
                raise ValueError(f"{flag} {show(given[key])} differs from the resumed run's {flag} "
                                 f"{show(stored[key])}; leave it out to continue the run, or pass --override")
        options = {key: stored[key] if given[key] is None else given[key] for key in RUN_OPTIONS}
        cycles = list(stored["cycles"])
    else:
        data = given["data"] or ["digits", None]
        defaults = DATA_DEFAULTS[data[0]]
        optimizer = given["optimizer"] or "sgd"
        options = {"model": given["model"] or defaults["model"], "norm": given["norm"] or "bn", "data": data,
                   "batch_size": given["batch_size"] or defaults["batch_size"],
                   "lr": given["lr"] or (defaults["lr"] if optimizer == "sgd" else 1e-3), "optimizer": optimizer,
                   "weight_decay": 5e-4 if given["weight_decay"] is None else given["weight_decay"],
                   "seed": 0 if given["seed"] is None else given["seed"]}
        cycles = None
    planned = sum(cycles) if cycles else None
    epochs = args.epochs or planned or DATA_DEFAULTS[options["data"][0]]["epochs"]
    if epochs < done:
        raise ValueError(f"--epochs {epochs}: the resumed run has already done {done} epochs")
    if cycles is None:
        cycles = [epochs]
    elif epochs > planned:
        cycles.append(epochs - planned)
        log(f"extending the run from {planned} to {epochs} epochs: epochs {planned + 1}-{epochs} get a one-cycle "
            f"schedule of their own (lr {options['lr'] / 25:g} -> {options['lr']:g} -> {options['lr'] / 25e4:g})")
    return options, cycles, epochs


def show(value):
    return ":".join(str(v) for v in value if v is not None) if isinstance(value, list) else str(value)


def for_flag(flag, path, read, *args):
    """``read(path, *args)``, its file and format errors as one ValueError naming the flag and the path."""
    try:
        return read(path, *args)
    except OSError as e:
        raise ValueError(f"{flag} {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{flag} {path}: {e}") from None


def read_checkpoint(path):
    """The checkpoint at ``path`` as cubn.load reads it; errors name --resume."""
    saved = for_flag("--resume", path, load)
    if not isinstance(saved, dict) or saved.get("format") != "cubn-checkpoint":
        raise ValueError(f"--resume {path}: not a cubn training checkpoint")
    return saved


def make_optimizer(name, model, lr, weight_decay):
    groups = optim.weight_decay_groups(model, weight_decay)
    if name == "sgd":
        return optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return (optim.Adam if name == "adam" else optim.AdamW)(groups, lr=lr)


def write_metrics(history, out):
    """metrics.json and metrics.csv: one row per epoch."""
    rows = [dict(zip(history, values)) for values in zip(*history.values())]
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(history, path, title):
    """Loss and accuracy per epoch (train and test) as a PNG; returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", left), ("accuracy", right)):
        for prefix, label in (("", "train"), ("val_", "test")):
            values = [numpy.nan if v is None else v for v in history[prefix + key]]
            axis.plot(history["epoch"], values, marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def data_parallel(model, batch_size, world):
    """The model for a run of ``world`` processes: SyncBatchNorm inside DistributedDataParallel."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world}): "
                         f"it is the global batch, split evenly over them")
    return nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model))


def cmd_train(args, log=print):
    world = distributed.world_size()        # > 1 under mpiexec: a data-parallel run (docs/distributed.md)
    if distributed.rank() != 0:
        log = lambda *a, **k: None          # noqa: E731  -- rank 0 speaks for the run
    options, cycles, epochs = run_options(args, log)
    (name, folder), model_name, norm = options["data"], options["model"], options["norm"]
    batch_size, lr, seed = options["batch_size"], options["lr"], options["seed"]
    device = ("cuda" if backend.has_gpu() else "cpu") if args.device == "auto" else backend.check_device(args.device)

    (x_train, y_train), (x_test, y_test), augment = load_data(name, folder)
    mean, std = input_stats(x_train)      # saved in model.npz: models.load_model gives them back
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    random.manual_seed(seed)
    architecture = {"name": model_name, "norm": norm, "in_channels": int(x_train.shape[1]),
                    "num_classes": int(y_train.max()) + 1, "image_size": [int(s) for s in x_train.shape[2:]]}
    model = models.create(**architecture)
    model.to(device)
    drop_last = len(x_train) > batch_size
    if world == 1:
        train_loader = DataLoader(x_train, y_train, batch_size, shuffle=True, drop_last=drop_last,
                                  seed=seed, device=device, augment=augment)
        test_loader = DataLoader(x_test, y_test, 512, device=device)
        trained = model
    else:                 # each rank: its shard of every epoch, batch_size / world of each global batch
        trained = data_parallel(model, batch_size, world)
        train_loader = DataLoader(x_train, y_train, batch_size // world, drop_last=drop_last, seed=seed, device=device,
                                  augment=augment, sampler=DistributedSampler(len(x_train), seed=seed))
        test_loader = DataLoader(x_test, y_test, 512, device=device,
                                 sampler=DistributedSampler(len(x_test), shuffle=False, pad=False))
    optimizer = make_optimizer(options["optimizer"], model, lr, options["weight_decay"])
    scheduler = OneCycles(optimizer, lr, [c * len(train_loader) for c in cycles])

    if args.resume:       # a checkpoint that cannot resume this model is refused before --out is touched
        fresh = models.create(**architecture)
        for_flag("--resume", args.resume, train.load_checkpoint, fresh if world == 1 else data_parallel(fresh, batch_size, world))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a file, not a folder")
    os.makedirs(args.out, exist_ok=True)
    n_params = sum(int(p.data.size) for p in model.parameters())
    log(f"cubn {__version__}: {model_name} (norm={norm}, {n_params:,} weights) on {name} "
        f"({len(x_train)} train / {len(x_test)} test images {tuple(x_train.shape[1:])}), device {device}, "
        f"{epochs} epochs of batch {batch_size}, {options['optimizer']} lr {lr} one-cycle"
        + (f", {world} processes (SyncBatchNorm, DistributedDataParallel)" if world > 1 else ""))

    def report(epoch, history):
        write_metrics(history, args.out)
        if not args.progress:
            log(f"epoch {epoch:3d}  loss {history['loss'][-1]:.4f}  acc {history['accuracy'][-1]:.4f}  "
                f"test loss {history['val_loss'][-1]:.4f}  test acc {history['val_accuracy'][-1]:.4f}  "
                f"{history['images_per_s'][-1]:.0f} img/s")

    history = train.fit(trained, train_loader, optimizer, epochs, val_loader=test_loader, scheduler=scheduler,
                        scheduler_interval="batch", checkpoint=os.path.join(args.out, "checkpoint.npz"),
                        resume=args.resume, progress=args.progress, on_epoch_end=report,
                        meta={"run": {**options, "cycles": cycles}})
    if distributed.rank() != 0:
        return history
    write_metrics(history, args.out)      # also when a resumed run had no epoch left to do
    models.save_model(os.path.join(args.out, "model.npz"), model, architecture, mean, std)
    png = plot_curves(history, os.path.join(args.out, "curves.png"), f"{model_name} norm={norm} on {name}")
    accuracy = history["val_accuracy"][-1] if history["val_accuracy"] else float("nan")
    log(f"test accuracy {accuracy:.4f} after {len(history['epoch'])} epochs, "
        f"{sum(history['seconds']):.1f} s of training; wrote {args.out}/metrics.csv, metrics.json, checkpoint.npz, "
        f"model.npz" + (", curves.png" if png else " (no curves.png: pip install matplotlib)"))
    return history


def cmd_eval(args, log=print):
    """Test accuracy of a model.npz on the raw test split of --data, with the standardization it saved."""
    model, prepare = for_flag("--model-file", args.model_file, models.load_model)
    name, folder = args.data
    _, (x_test, y_test), _ = load_data(name, folder)
    device = ("cuda" if backend.has_gpu() else "cpu") if args.device == "auto" else backend.check_device(args.device)
    loss, accuracy = train.evaluate(model.to(device), DataLoader(prepare(x_test), y_test, 512, device=device))
    log(f"{args.model_file} on the {name} test set ({len(x_test)} images): accuracy {accuracy:.4f}, loss {loss:.4f}")
    return loss, accuracy


def cmd_info(args, log=print):
    """Versions, the GPU, and whether the kernels compile for it (or, without one, under NVRTC)."""
    log(f"cubn {__version__}  python {platform.python_version()}  numpy {numpy.__version__}  "
        f"({platform.machine()}, {platform.system()})")
    cupy = backend.cupy
    log(f"cupy {cupy.__version__}" if cupy is not None else "cupy not installed (pip install 'cubn[cuda12]' or "
        "'cubn[cuda13]' for the GPU path)")
    path = cpu_norm_path()
    if path == "loops":
        log(f"CPU norms: compiled loops, numba {importlib.metadata.version('numba')} "
            "(cubn/jit; CUBN_KERNELS=ref for the NumPy twins)")
    elif path == "twins":
        log("CPU norms: the NumPy twins (cubn/ref; pip install 'cubn[cpu]' for the compiled loops, cubn/jit)")
    else:
        log("CPU norms: the CUDA kernels on the CPU emulator (CUBN_KERNELS=emulate)")
    ok = True
    if backend.has_gpu():
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        log(f"GPU: {props['name'].decode()} (compute capability {props['major']}.{props['minor']}, "
            f"{props['totalGlobalMem'] / 2**30:.1f} GiB), CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
        from .cuda import loader, nvrtc
        for file in nvrtc.FILES:
            for dtype, defines in loader.DTYPE_DEFINES.items():
                try:
                    loader.module(file, defines).compile()
                    log(f"  compiles on this GPU: {file} {dtype.name}")
                except Exception as e:  # report every failure, then exit non-zero
                    ok = False
                    log(f"  FAILS on this GPU: {file} {dtype.name}: {e}")
    else:
        log("GPU: none answers; the NumPy path is used")
        from .cuda import loader, nvrtc
        try:
            _, path = nvrtc.find_library()
        except OSError as e:
            log(f"kernel compile check skipped: {e}")
            return 0
        log(f"kernel compile check with {path}:")
        for file in nvrtc.FILES:
            for dtype, defines in loader.DTYPE_DEFINES.items():
                try:
                    nvrtc.compile_check(file, defines, "80")
                    log(f"  compiles for compute_80: {file} {dtype.name}")
                except nvrtc.CompileError as e:
                    ok = False
                    log(f"  FAILS: {e}")
    return 0 if ok else 1


def build_parser():
    parser = argparse.ArgumentParser(prog="cubn", description="Train small CNNs with cubn's normalization layers.")
    parser.add_argument("--version", action="version", version=f"cubn {__version__}")
    sub = parser.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train a model (defaults: a small BatchNorm CNN on the shipped digits)")
    t.add_argument("--model", choices=models.MODELS, help="default: cnn for digits/mnist, resnet20 for cifar10/synthetic")
    t.add_argument("--norm", choices=models.NORMS, help="default: bn")
    t.add_argument("--data", type=parse_data, metavar="digits|mnist:DIR|cifar10:DIR|synthetic", help="default: digits")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--lr", type=_positive_float, help="peak learning rate of the one-cycle schedule")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="default: sgd")
    t.add_argument("--weight-decay", type=_nonnegative_float,
                   help="default 5e-4; not applied to norm parameters and biases")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    t.add_argument("--out", type=os.path.expanduser, default="runs/latest",
                   help="folder for metrics, curves and checkpoints")
    t.add_argument("--resume", type=os.path.expanduser, metavar="PATH",
                   help="continue the run saved in this checkpoint.npz, with its stored options; --epochs "
                        "beyond its schedule extends it")
    t.add_argument("--override", action="store_true",
                   help="with --resume: let the options given now replace the stored ones")
    t.add_argument("--seed", type=_int, help="default: 0")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="one line per epoch, no bar")
    e = sub.add_parser("eval", help="test accuracy of a saved model.npz on its data set's test split")
    e.add_argument("--model-file", type=os.path.expanduser, default="runs/latest/model.npz", metavar="PATH")
    e.add_argument("--data", type=parse_data, default=("digits", None), metavar="digits|mnist:DIR|cifar10:DIR|synthetic")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    for command in (t, e):
        command.add_argument("--threads", type=_positive_int, default=default_threads(),
                             help="BLAS threads for the CPU path's matrix products (default 1, or what "
                                  "OMP_NUM_THREADS or OPENBLAS_NUM_THREADS say; docs/cpu.md)")
    sub.add_parser("info", help="versions, the GPU, and whether the kernels compile there")
    return parser


def default_threads():
    """1, unless the environment already sets the BLAS thread count: on a small or shared machine the
    main job's matrix products are too small to gain from more, and lose a lot when threads contend
    for cores (docs/cpu.md has the measurements)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            pass
    return 1


def _number(text, kind, ok, expected):
    """``kind(text)`` if ``ok`` of it, else an ArgumentTypeError that argparse prefixes with the flag's name
    (a ValueError would come out as "invalid <function name> value")."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive_int(text):
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def _int(text):
    return _number(text, int, lambda v: True, "an integer")


def _positive_float(text):
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def _nonnegative_float(text):
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:          # a bare `cubn` says what it can do; it does not start a run
        parser.print_help()
        return 0
    if args.command in ("train", "eval"):
        set_num_threads(args.threads)
        keep_freed_memory()
        try:
            (cmd_train if args.command == "train" else cmd_eval)(args)
        except (ValueError, OSError, RuntimeError) as e:   # bad data, paths or checkpoints: one line, no traceback
            print(f"cubn {args.command}: error: {e}", file=sys.stderr)
            return 2
        return 0
    return cmd_info(args)
