import numpy
import pytest

from cubn import backend

gpu = pytest.mark.gpu

# One test body, two array paths: tests take the ``device`` fixture and make
# their inputs with ``to_dev``. The GPU case skips cleanly where no GPU answers.
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]


def pytest_collection_modifyitems(config, items):
    if backend.has_gpu():
        return
    skip = pytest.mark.skip(reason="no CUDA device answers through CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def to_dev(a, device):
    """A NumPy array moved to ``device`` ('cpu' keeps it as it is)."""
    return backend.to_device(numpy.asarray(a), device)
