"""A trained model in one file: its weights, how to rebuild it, and the input standardization it was trained with.

``cubn train`` writes ``model.npz`` with ``save_model``; ``load_model`` gives the model back in
eval mode together with the transform its inputs need, so raw images score what the run reported::

    model, prepare = models.load_model("runs/latest/model.npz")
    loss, accuracy = train.evaluate(model, DataLoader(prepare(x_test), y_test, 512))

Contents (``cubn.save``'s format, read without pickle)::

    {"format": "cubn-model", "version": 1,
     "architecture": {"name": "cnn", "norm": "bn", "in_channels", "num_classes", "image_size": [H, W]},
     "input": {"mean": (C,), "std": (C,)},      the training set's per-channel statistics
     "state": model.state_dict()}
"""
import numpy

from ..serialization import load, save

FORMAT, VERSION = "cubn-model", 1


def save_model(path, model, architecture, mean, std):
    """Write ``model``'s weights with its ``architecture`` (the arguments of ``models.create``) and input stats."""
    save({"format": FORMAT, "version": VERSION, "architecture": dict(architecture),
          "input": {"mean": numpy.asarray(mean, numpy.float32).reshape(-1),
                    "std": numpy.asarray(std, numpy.float32).reshape(-1)},
          "state": model.state_dict()}, path)


def load_model(path):
    """``(model in eval mode on the CPU, prepare)`` from a file of ``save_model``; ``prepare(images)``
    standardizes (N, C, H, W) images in [0, 1] as the training run did."""
    from . import create
    saved = load(path)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cubn model file (format {FORMAT!r}); a checkpoint.npz holds its "
                         f"model under 'model', for train.load_checkpoint")
    if saved.get("version") != VERSION:
        raise ValueError(f"{path} is model file version {saved.get('version')!r}; this cubn reads version {VERSION}")
    model = create(**saved["architecture"])
    model.load_state_dict(saved["state"])
    mean, std = (saved["input"][k].reshape(1, -1, 1, 1) for k in ("mean", "std"))

    def prepare(images):
        return ((numpy.asarray(images, numpy.float32) - mean) / std).astype(numpy.float32)
    return model.eval(), prepare
