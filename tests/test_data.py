"""cubn.data: shipped digits, MNIST/CIFAR-10 readers on files written here, synthetic data, DataLoader, augmentation."""
import gzip
import struct
from importlib import resources

import numpy
import pytest

import cubn
from cubn import backend
from cubn.data import (Compose, DataLoader, Normalize, RandomCrop, RandomHorizontalFlip, load_cifar10,
                       load_digits, load_mnist, synthetic_cifar)
from conftest import to_dev

to_np = backend.to_numpy


# ---- shipped digits ------------------------------------------------------------------------------

@pytest.mark.parametrize("split, n", [("train", 1437), ("test", 360), ("all", 1797)])
def test_digits_shapes_dtypes_ranges(split, n):
    x, y = load_digits(split)
    assert x.shape == (n, 1, 8, 8) and x.dtype == numpy.float32 and y.shape == (n,) and y.dtype == numpy.int64
    assert x.min() == 0 and x.max() == 1 and set(numpy.unique(y)) == set(range(10))
    counts = numpy.bincount(y, minlength=10)
    assert counts.min() >= 0.09 * n and counts.max() <= 0.11 * n  # stratified: ~10% per class


def test_digits_split_is_disjoint_and_covers_all():
    with resources.files("cubn.data").joinpath("digits.npz").open("rb") as f, numpy.load(f) as stored:
        train, test = stored["train"], stored["test"]
    assert len(numpy.intersect1d(train, test)) == 0
    numpy.testing.assert_array_equal(numpy.sort(numpy.concatenate([train, test])), numpy.arange(1797))
    x, y = load_digits("all", dtype=numpy.uint8)
    for split, index in (("train", train), ("test", test)):
        xs, ys = load_digits(split, dtype=numpy.uint8)
        numpy.testing.assert_array_equal(xs, x[index])
        numpy.testing.assert_array_equal(ys, y[index])


def test_digits_uint8_keeps_counts_and_float_scales_by_16():
    raw, _ = load_digits("all", dtype=numpy.uint8)
    x, _ = load_digits("all", dtype=numpy.float64)
    assert raw.dtype == numpy.uint8 and raw.max() == 16 and x.dtype == numpy.float64
    numpy.testing.assert_array_equal(x * 16, raw)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")
    with pytest.raises(TypeError, match="dtype"):
        load_digits(dtype=numpy.int32)


# ---- MNIST idx files -----------------------------------------------------------------------------

def write_idx(path, array, magic=None):
    data = (magic or bytes([0, 0, 8, array.ndim])) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes((gzip.compress if path.suffix == ".gz" else bytes)(data + array.astype(numpy.uint8).tobytes()))
    return path


def write_mnist(root, split="train", n=5, gz=False):
    rng = numpy.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    prefix, ext = ("train" if split == "train" else "t10k"), (".gz" if gz else "")
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, split, gz):
    images, labels = write_mnist(tmp_path, split, gz=gz)
    raw, y = load_mnist(tmp_path, split, dtype=numpy.uint8)
    numpy.testing.assert_array_equal(raw, images[:, None])
    numpy.testing.assert_array_equal(y, labels)
    assert y.dtype == numpy.int64
    x, _ = load_mnist(tmp_path, split)
    assert x.dtype == numpy.float32 and x.shape == (5, 1, 28, 28)
    numpy.testing.assert_allclose(x, images[:, None] / 255, rtol=1e-6)


def corrupt_mnist(root, how):
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    if how == "missing":
        labels.unlink()
    elif how == "magic":
        write_idx(images, numpy.zeros((5, 28, 28)), magic=bytes([0, 0, 8, 1]))
    elif how == "truncated":
        images.write_bytes(images.read_bytes()[:-7])
    elif how == "trailing":
        images.write_bytes(images.read_bytes() + b"\0")
    elif how == "header":
        images.write_bytes(images.read_bytes()[:10])
    elif how == "count":
        write_idx(labels, numpy.zeros(4))
    elif how == "label":
        write_idx(labels, numpy.array([0, 1, 2, 3, 10]))
    elif how == "gzip":
        images.unlink()
        (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")


@pytest.mark.parametrize("how, error, match", [
    ("missing", FileNotFoundError, "train-labels-idx1-ubyte"),
    ("magic", ValueError, "train-images-idx3-ubyte: magic number 0x00000801"),
    ("truncated", ValueError, "train-images-idx3-ubyte: truncated"),
    ("trailing", ValueError, "trailing bytes"),
    ("header", ValueError, "truncated inside the header"),
    ("count", ValueError, "5 images but .* 4 labels"),
    ("label", ValueError, "label 10"),
    ("gzip", ValueError, r"idx3-ubyte.gz: not a readable gzip"),
])
def test_mnist_malformed_files(tmp_path, how, error, match):
    write_mnist(tmp_path)
    corrupt_mnist(tmp_path, how)
    with pytest.raises(error, match=match):
        load_mnist(tmp_path)


def test_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "all")


# ---- CIFAR-10 binary -----------------------------------------------------------------------------

BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_cifar(folder, per_file=2):
    """Each batch file gets ``per_file`` records; returns {name: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, written = numpy.random.default_rng(1), {}
    for name in BATCHES:
        images, labels = rng.integers(0, 256, (per_file, 3, 32, 32)), rng.integers(0, 10, per_file)
        records = numpy.concatenate([labels[:, None], images.reshape(per_file, -1)], axis=1)
        (folder / name).write_bytes(records.astype(numpy.uint8).tobytes())
        written[name] = images, labels
    return written


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_cifar_round_trip(tmp_path, subfolder):
    written = write_cifar(tmp_path / subfolder)
    for split, names in (("train", BATCHES[:5]), ("test", BATCHES[5:])):
        raw, y = load_cifar10(tmp_path, split, dtype=numpy.uint8)
        numpy.testing.assert_array_equal(raw, numpy.concatenate([written[n][0] for n in names]))
        numpy.testing.assert_array_equal(y, numpy.concatenate([written[n][1] for n in names]))
        x, _ = load_cifar10(tmp_path, split)
        assert x.dtype == numpy.float32 and x.shape == (2 * len(names), 3, 32, 32) and y.dtype == numpy.int64
        numpy.testing.assert_allclose(x, raw / 255, rtol=1e-6)


def corrupt_cifar(root, how):
    path = root / "data_batch_3.bin"
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "record size":  # CIFAR-100 style: 2 label bytes per record
        path.write_bytes(bytes(3074 * 2))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "label":
        path.write_bytes(bytes([10]) + bytes(3072))


@pytest.mark.parametrize("how, error, match", [
    ("missing", FileNotFoundError, "data_batch_3.bin is missing"),
    ("truncated", ValueError, "data_batch_3.bin: 6046 bytes is not a whole"),
    ("record size", ValueError, "data_batch_3.bin: 6148 bytes is not a whole"),
    ("empty", ValueError, "data_batch_3.bin: 0 bytes"),
    ("label", ValueError, "data_batch_3.bin: label 10"),
])
def test_cifar_malformed_files(tmp_path, how, error, match):
    write_cifar(tmp_path)
    corrupt_cifar(tmp_path, how)
    with pytest.raises(error, match=match):
        load_cifar10(tmp_path, "train")


def test_cifar_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_batch.bin not found"):
        load_cifar10(tmp_path, "test")


@pytest.mark.parametrize("layout", ["data_batch_1", "cifar-10-batches-py/data_batch_1"])
def test_cifar_pickled_version_only_is_refused(tmp_path, layout):
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="pickled Python version .* binary version"):
        load_cifar10(tmp_path, "train")


# ---- synthetic -----------------------------------------------------------------------------------

def test_synthetic_cifar_is_reproducible_and_learnable():
    x, y = synthetic_cifar(500, seed=0)
    assert x.shape == (500, 3, 32, 32) and x.dtype == numpy.float32 and y.dtype == numpy.int64
    assert x.min() >= 0 and x.max() <= 1 and set(numpy.unique(y)) == set(range(10))
    numpy.testing.assert_array_equal(synthetic_cifar(500, seed=0)[0], x)
    xt, yt = synthetic_cifar(300, seed=1)
    assert not numpy.array_equal(xt[:10], x[:10])
    # the classes are the same task for every seed: class means from seed 0 classify seed 1
    means = numpy.stack([x[y == k].mean(0).ravel() for k in range(10)])
    guess = numpy.argmin(((xt.reshape(300, 1, -1) - means) ** 2).sum(-1), axis=1)
    assert (guess == yt).mean() > 0.9
    assert synthetic_cifar(50, seed=0, num_classes=3)[1].max() == 2


# ---- DataLoader ----------------------------------------------------------------------------------

def small_data(n=10):
    """Images whose every pixel holds the sample's index, so a batch tells which samples it holds."""
    ids = numpy.arange(n)
    return numpy.broadcast_to(ids[:, None, None, None], (n, 2, 4, 4)).astype(numpy.float32), ids


def epoch_ids(loader):
    return numpy.concatenate([to_np(y.data) for _, y in loader])


def test_loader_batches_len_drop_last(device):
    images, labels = small_data(10)
    loader = DataLoader(images, labels, batch_size=4, device=device)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.device == device and y.device == device and y.dtype == numpy.int64
        numpy.testing.assert_array_equal(to_np(x.data)[:, 0, 0, 0], to_np(y.data))
    numpy.testing.assert_array_equal(epoch_ids(loader), labels)
    dropped = DataLoader(images, labels, batch_size=4, drop_last=True, device=device)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert len(DataLoader(images, labels, batch_size=5, drop_last=True)) == 2


def test_loader_shuffle_reproducible_per_seed_and_epoch(device):
    images, labels = small_data(50)
    loader = DataLoader(images, labels, batch_size=8, shuffle=True, seed=7, device=device)
    first, second = epoch_ids(loader), epoch_ids(loader)
    for order in (first, second):  # every sample exactly once per epoch
        numpy.testing.assert_array_equal(numpy.sort(order), labels)
    assert not numpy.array_equal(first, second) and not numpy.array_equal(first, labels)
    again = DataLoader(images, labels, batch_size=8, shuffle=True, seed=7, device=device)
    numpy.testing.assert_array_equal(epoch_ids(again), first)
    numpy.testing.assert_array_equal(epoch_ids(again), second)
    other = DataLoader(images, labels, batch_size=8, shuffle=True, seed=8, device=device)
    assert not numpy.array_equal(epoch_ids(other), first)


def test_loader_seed_none_follows_manual_seed():
    images, labels = small_data(30)
    orders = []
    for _ in range(2):
        cubn.manual_seed(3)
        orders.append(epoch_ids(DataLoader(images, labels, batch_size=30, shuffle=True)))
    numpy.testing.assert_array_equal(*orders)


def batches_of(loader):
    return [(to_np(x.data), to_np(y.data)) for x, y in loader]


def test_loader_state_dict_resumes_order_and_augmentation(device):
    images, labels = small_data(20)
    augment = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip()])
    loader = DataLoader(images, labels, batch_size=6, shuffle=True, seed=11, device=device, augment=augment)
    list(loader), next(iter(loader))  # one full epoch and one cut short: both count
    state = loader.state_dict()
    assert state == {"seed": 11, "epoch": 2}
    expected = batches_of(loader)
    resumed = DataLoader(images, labels, batch_size=6, shuffle=True, seed=0, device=device, augment=augment)
    resumed.load_state_dict(state)
    for (x, y), (x2, y2) in zip(batches_of(resumed), expected, strict=True):
        numpy.testing.assert_array_equal(x, x2)
        numpy.testing.assert_array_equal(y, y2)


def test_loader_augmentation_depends_on_seed_and_epoch(device):
    x, labels = random_images((20, 1, 6, 6)), numpy.arange(20)
    make = lambda seed: DataLoader(x, labels, 20, seed=seed, device=device, augment=RandomCrop(4))  # noqa: E731
    loader = make(1)
    first, second = batches_of(loader)[0][0], batches_of(loader)[0][0]
    assert not numpy.array_equal(first, second)
    assert not numpy.array_equal(batches_of(make(2))[0][0], first)
    numpy.testing.assert_array_equal(batches_of(make(1))[0][0], first)


def test_loader_gives_the_same_batches_on_every_device(device):
    images, labels = small_data(20)
    augment = Compose([RandomCrop(3, padding=2), RandomHorizontalFlip()])
    make = lambda dev: DataLoader(images, labels, 6, shuffle=True, seed=5, device=dev, augment=augment)  # noqa: E731
    for (x, y), (x2, y2) in zip(batches_of(make(device)), batches_of(make("cpu")), strict=True):
        numpy.testing.assert_array_equal(x, x2)
        numpy.testing.assert_array_equal(y, y2)


def test_loader_accepts_tensors_and_device_arrays(device):
    images, labels = small_data(6)
    loader = DataLoader(cubn.Tensor(to_dev(images, device)), to_dev(labels, device), batch_size=4, device=None)
    assert loader.device == device
    numpy.testing.assert_array_equal(epoch_ids(loader), labels)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, ValueError, "batch_size"),
    ({"labels": numpy.arange(9)}, ValueError, "10 vs 9"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"seed": -1}, ValueError, "seed"),
    ({"augment": "flip"}, TypeError, "augment"),
])
def test_loader_bad_arguments(kwargs, error, match):
    images, labels = small_data(10)
    with pytest.raises(error, match=match):
        DataLoader(**{"images": images, "labels": labels, "batch_size": 4, **kwargs})


# ---- augmentation --------------------------------------------------------------------------------

def random_images(shape=(16, 2, 5, 7), seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32)


def test_random_crop_is_slicing_the_padded_image(device):
    x = random_images()
    crop = RandomCrop((4, 6), padding=2)
    top, left = crop.draw(x.shape, numpy.random.default_rng(1))
    assert top.min() >= 0 and top.max() <= 5 and left.min() >= 0 and left.max() <= 5 and len(set(top)) > 1
    out = crop.apply(to_dev(x, device), top, left)
    assert backend.device_of(out) == device and out.shape == (16, 2, 4, 6)
    padded = numpy.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    expected = numpy.stack([padded[i, :, t:t + 4, l:l + 6] for i, (t, l) in enumerate(zip(top, left))])
    numpy.testing.assert_array_equal(to_np(out), expected)
    numpy.testing.assert_array_equal(to_np(crop(to_dev(x, device), numpy.random.default_rng(1))), expected)
    with pytest.raises(ValueError, match="crop size"):
        RandomCrop(12, padding=2)(x, numpy.random.default_rng(0))


def test_random_flip_mirrors_the_drawn_images(device):
    x = random_images()
    flip = RandomHorizontalFlip(0.5)
    flags = flip.draw(x.shape, numpy.random.default_rng(2))
    assert 0 < flags.sum() < len(flags)
    out = to_np(flip.apply(to_dev(x, device), flags))
    numpy.testing.assert_array_equal(out[flags], x[flags][..., ::-1])
    numpy.testing.assert_array_equal(out[~flags], x[~flags])
    rng = numpy.random.default_rng(0)
    numpy.testing.assert_array_equal(to_np(RandomHorizontalFlip(0)(to_dev(x, device), rng)), x)
    numpy.testing.assert_array_equal(to_np(RandomHorizontalFlip(1)(to_dev(x, device), rng)), x[..., ::-1])
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(1.5)


def test_compose_applies_in_order_with_one_generator(device):
    x = random_images()
    crop, flip = RandomCrop(4, padding=1), RandomHorizontalFlip()
    out = Compose([crop, flip])(to_dev(x, device), numpy.random.default_rng(3))
    rng = numpy.random.default_rng(3)
    cropped = crop.apply(x, *crop.draw(x.shape, rng))
    numpy.testing.assert_array_equal(to_np(out), flip.apply(cropped, flip.draw(cropped.shape, rng)))


def test_normalize_per_channel(device):
    x = random_images()
    out = Normalize([0.5, -1.0], [2.0, 0.25])(to_dev(x, device))
    assert backend.device_of(out) == device and out.dtype == numpy.float32
    numpy.testing.assert_allclose(to_np(out)[:, 0], (x[:, 0] - 0.5) / 2.0, rtol=1e-6)
    numpy.testing.assert_allclose(to_np(out)[:, 1], (x[:, 1] + 1.0) / 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="2 channels"):
        Normalize([0.5, 0.5], [1, 1])(x[:, :1])
    with pytest.raises(ValueError, match="std > 0"):
        Normalize([0.5], [0.0])
