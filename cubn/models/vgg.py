"""A small VGG-style CNN: stacks of 3x3 (Conv2d -> norm -> ReLU), 2x2 max pools, a global average pool
and one Linear classifier."""
from .. import nn
from .norms import has_shift, norm_layer


class VGG(nn.Sequential):
    """``VGG(in_channels=3, num_classes=10, config=(64, 64, "M", 128, 128, "M", 256, "M"), norm="bn")``.

    ``config`` lists output channels of 3x3 convolutions (padding 1) and "M" for a 2x2 max pool.
    A global average pool makes the classifier independent of the image size, so the same
    model takes the 8x8 digits and 32x32 CIFAR images.
    """

    def __init__(self, in_channels=3, num_classes=10, config=(64, 64, "M", 128, 128, "M", 256, "M"), norm="bn"):
        layers, channels = [], in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=not has_shift(norm)), norm_layer(norm, item),
                       nn.ReLU()]
            channels = item
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
        super().__init__(layers)


def small_cnn(in_channels=1, num_classes=10, norm="bn"):
    """The CLI's default model for the 8x8 digits: 32-32-M-64-64-M, then global pooling (about 65k weights)."""
    return VGG(in_channels, num_classes, config=(32, 32, "M", 64, 64, "M"), norm=norm)
