"""ResNet-20 for CIFAR (He et al. 2016, section 4.2): a 3x3 stem, three stages of three basic blocks
with 16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), global average pooling and a
Linear classifier; 0.27 million weights with the paper's shortcuts.

Where the shape changes, the shortcut is a 1x1 strided convolution followed by the norm (the paper's
option B) rather than zero-padding (option A): it is one line of code and the common choice in
PyTorch ports. ``depth`` = 6n + 2 gives ResNet-20/32/44/56 with n = 3/5/7/9.
"""
from .. import nn
from .norms import has_shift, norm_layer


def conv3x3(in_channels, out_channels, stride, norm):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not has_shift(norm))


class BasicBlock(nn.Module):
    """relu(norm(conv(relu(norm(conv(x))))) + shortcut(x)): two 3x3 convolutions and a residual addition."""

    def __init__(self, in_channels, out_channels, stride=1, norm="bn"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, norm)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, norm)
        self.norm2 = norm_layer(norm, out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                                    bias=not has_shift(norm)), norm_layer(norm, out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.norm1(self.conv1(x)).relu()
        out = self.norm2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """``ResNet(depth=20, in_channels=3, num_classes=10, norm="bn", widths=(16, 32, 64))``."""

    def __init__(self, depth=20, in_channels=3, num_classes=10, norm="bn", widths=(16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...), got {depth!r}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0], 1, norm), norm_layer(norm, widths[0]), nn.ReLU())
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1, norm))
                channels = width
        self.blocks = nn.Sequential(blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def resnet20(in_channels=3, num_classes=10, norm="bn"):
    return ResNet(20, in_channels, num_classes, norm)
