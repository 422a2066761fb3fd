"""Build cubn/data/digits.npz from scikit-learn's copy of the UCI 8x8 digits (run once; kept for provenance).

The source is ``sklearn/datasets/data/digits.csv.gz`` inside the scikit-learn wheel (1797 rows of
64 pixel counts 0..16 then the label). scikit-learn is not a dependency of cubn; fetch the wheel only
to read that file:

    pip download --no-deps -d /tmp/skl scikit-learn
    unzip -o /tmp/skl/scikit_learn-*.whl sklearn/datasets/data/digits.csv.gz -d /tmp/skl
    python scripts/make_digits.py /tmp/skl/sklearn/datasets/data/digits.csv.gz

The output holds ``images`` uint8 (1797, 8, 8), ``labels`` uint8 (1797,) and a fixed stratified
split as sorted int64 index arrays ``train`` (1437) and ``test`` (360), drawn with seed 0.
See cubn/data/DIGITS_LICENSE.txt for attribution.
"""
import hashlib
import pathlib
import sys

import numpy

OUT = pathlib.Path(__file__).resolve().parent.parent / "cubn" / "data" / "digits.npz"
N_TEST = 360


def stratified_test_indices(labels, n_test, seed):
    """``n_test`` indices, each class represented in proportion to its size (to within one sample).

    Each class is shuffled and its members ranked by position/class size; the ``n_test``
    lowest ranks form the test set, so exactly ``n_test`` are taken and every class gives its share.
    """
    rng = numpy.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    rank = numpy.empty(len(labels))
    for k in numpy.unique(labels):
        members = perm[labels[perm] == k]
        rank[members] = numpy.arange(len(members)) / len(members)
    return numpy.sort(numpy.argsort(rank, kind="stable")[:n_test])


def main(source):
    raw = pathlib.Path(source).read_bytes()
    table = numpy.loadtxt(source, delimiter=",", dtype=numpy.int64)
    if table.shape != (1797, 65) or table.min() < 0 or table[:, :64].max() > 16 or table[:, 64].max() > 9:
        raise ValueError(f"{source}: not the 1797 x (64 pixels 0..16 + label 0..9) digits table")
    images = table[:, :64].reshape(-1, 8, 8).astype(numpy.uint8)
    labels = table[:, 64].astype(numpy.uint8)
    test = stratified_test_indices(labels, N_TEST, seed=0)
    train = numpy.setdiff1d(numpy.arange(len(labels)), test)
    numpy.savez_compressed(OUT, images=images, labels=labels, train=train, test=test)
    print(f"source sha256 {hashlib.sha256(raw).hexdigest()}")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): train {len(train)}, test {len(test)}, "
          f"test per class {numpy.bincount(labels[test]).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/skl/sklearn/datasets/data/digits.csv.gz")
