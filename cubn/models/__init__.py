"""Ready-made models; each takes ``norm=`` ("bn", "brn", "gn", "ln", "in", "rms", "none") to swap the
normalization everywhere (see ``cubn.models.norms`` for what each maps to).

``create(name, in_channels, num_classes, image_size, norm)`` builds one by name, as the CLI does;
``save_model`` / ``load_model`` keep a trained one with the input standardization it needs.
"""
from .mlp import MLP
from .norms import NORMS, ChannelRMSNorm, norm_layer
from .resnet import BasicBlock, ResNet, resnet20
from .saved import load_model, save_model
from .vgg import VGG, small_cnn

MODELS = ("cnn", "vgg", "resnet20", "mlp")


def create(name, in_channels, num_classes, image_size, norm="bn"):
    """``name``: "cnn" (small_cnn), "vgg" (VGG), "resnet20" or "mlp"; image_size = (H, W) for the MLP's input."""
    if name == "cnn":
        return small_cnn(in_channels, num_classes, norm)
    if name == "vgg":
        return VGG(in_channels, num_classes, norm=norm)
    if name == "resnet20":
        return resnet20(in_channels, num_classes, norm)
    if name == "mlp":
        return MLP(in_channels * image_size[0] * image_size[1], num_classes, norm=norm)
    raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {name!r}")


__all__ = [
    "MLP",
    "MODELS",
    "NORMS",
    "VGG",
    "BasicBlock",
    "ChannelRMSNorm",
    "ResNet",
    "create",
    "load_model",
    "norm_layer",
    "resnet20",
    "save_model",
    "small_cnn",
]
