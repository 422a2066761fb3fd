"""2-D pooling over NCHW images: max, average and adaptive average, functional and as layers.

As in PyTorch: ``kernel_size``, ``stride`` and ``padding`` take an int or a pair; ``stride=None``
means ``stride = kernel_size``; padding may be at most half the kernel size; output sizes round
down (ceil_mode=False). Max pooling pads with -inf, average pooling with zeros that count in the
mean (count_include_pad=True). Not supported: dilation, ceil_mode, return_indices, divisor_override,
unbatched 3-D input.
"""
from ..ops import conv as _conv
from .checks import check_input
from .conv import pair, window_args
from .module import Module


def pool_args(kernel_size, stride, padding):
    """(kernel, stride, padding) as pairs, checked like PyTorch's."""
    kernel = pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else pair(stride, "stride", 1)
    padding = pair(padding, "padding", 0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding={padding} must be at most half of kernel_size={kernel}")
    return kernel, stride, padding


def _pool(fn, who, input, kernel_size, stride, padding):
    x = check_input(input, ndims=(4,), layer=who)
    kernel, stride, padding = pool_args(kernel_size, stride, padding)
    window_args(x, kernel, stride, padding, (1, 1), who)
    return fn.apply(x, kernel=kernel, stride=stride, padding=padding)


def max_pool2d(input, kernel_size, stride=None, padding=0):
    """Max over each window; the gradient goes to the first maximum of the window (PyTorch's tie rule)."""
    return _pool(_conv.MaxPool2d, "max_pool2d", input, kernel_size, stride, padding)


def avg_pool2d(input, kernel_size, stride=None, padding=0):
    """Mean over each window, the zero padding included in the count (PyTorch's default)."""
    return _pool(_conv.AvgPool2d, "avg_pool2d", input, kernel_size, stride, padding)


def adaptive_avg_pool2d(input, output_size):
    """Average to an (OH, OW) output: row window i is [floor(i*H/OH), ceil((i+1)*H/OH)), columns alike.

    When OH divides H and OW divides W this is avg_pool2d with kernel = stride = (H/OH, W/OW).
    """
    x = check_input(input, ndims=(4,), layer="adaptive_avg_pool2d")
    size = pair(output_size, "output_size", 1)
    H, W = x.shape[2:]
    if H < 1 or W < 1:
        raise ValueError(f"adaptive_avg_pool2d: input must have a non-empty (H, W), got shape {tuple(x.shape)}")
    if H % size[0] == 0 and W % size[1] == 0:
        kernel = (H // size[0], W // size[1])
        return _conv.AvgPool2d.apply(x, kernel=kernel, stride=kernel, padding=(0, 0))
    return _conv.AdaptiveAvgPool2d.apply(x, output_size=size)


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        pool_args(kernel_size, stride, padding)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        pair(output_size, "output_size", 1)
        self.output_size = output_size

    def forward(self, input):
        return adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
