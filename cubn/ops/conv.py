"""Convolution and pooling Functions over NCHW images, on NumPy or CuPy arrays.

Arguments arrive checked and normalized (``cubn.nn.conv`` and ``cubn.nn.pooling`` do that):
``kernel``, ``stride``, ``padding``, ``dilation`` and ``output_size`` are pairs of ints.

Everything is built on one strided view, ``windows``: for x of shape (N, C, H, W) it is the
(N, C, OH, OW, KH, KW) array whose [n, c, i, j, p, q] is the padded x[n, c, i*sh + p*dh, j*sw + q*dw],
made without copying by ``as_strided`` on the padded array. Its adjoint ``col2im`` adds such an
array back onto the image, one kernel tap at a time (KH*KW vectorized slice additions, no scatter,
so the order of the sums is fixed). Conv2d copies the view once into an im2col matrix and multiplies
it by the weight (cuBLAS on the GPU); the pools reduce the view directly.
"""
from ..backend import get_array_module
from ..tensor import Function


def output_size(size, kernel, stride, padding, dilation):
    """(OH, OW) of a sliding window over ``size`` (H, W), PyTorch's formula (floor mode)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


def windows(x, kernel, stride, padding, dilation, fill):
    """The (N, C, OH, OW, KH, KW) view of x padded with ``fill`` (see the module docstring).

    Read it only: the windows overlap, and CuPy's as_strided has no ``writeable=False``.
    """
    xp = get_array_module(x)
    (ph, pw), (kh, kw) = padding, kernel
    if ph or pw:
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    oh, ow = output_size(x.shape[2:], kernel, stride, (0, 0), dilation)
    sn, sc, sh, sw = x.strides
    strides = (sn, sc, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1])
    return xp.lib.stride_tricks.as_strided(x, x.shape[:2] + (oh, ow, kh, kw), strides)


def col2im(cols, shape, stride, padding, dilation):
    """Adjoint of ``windows``: add cols (N, C, OH, OW, KH, KW) onto an image of ``shape`` (N, C, H, W).

    Each tap (p, q) touches the strided grid rows p*dh + i*sh, columns q*dw + j*sw of the padded
    image; padding is cut off at the end.
    """
    xp = get_array_module(cols)
    N, C, OH, OW, KH, KW = cols.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H, W = shape[2:]
    dx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for p in range(KH):
        for q in range(KW):
            dx[:, :, p * dh:p * dh + sh * (OH - 1) + 1:sh, q * dw:q * dw + sw * (OW - 1) + 1:sw] += cols[..., p, q]
    return dx[:, :, ph:ph + H, pw:pw + W]


class Conv2d(Function):
    """y[n, o] = bias[o] + sum over c in o's group, p, q of w[o, c, p, q] * x_padded[n, c, i*sh + p*dh, j*sw + q*dw].

    x (N, C, H, W), w (O, C/G, KH, KW), bias (O,) or None -> y (N, O, OH, OW), C-contiguous.
    im2col: cols (G, C/G*KH*KW, N*OH*OW), so each group is one GEMM w_g (O/G, C/G*KH*KW) @ cols_g.
    Backward: dw_g = dy_g @ cols_g^T, dcols_g = w_g^T @ dy_g folded back by ``col2im``, dbias = sum dy.
    """

    def forward(self, x, w, bias, stride, padding, dilation, groups):
        xp = get_array_module(x)
        N = x.shape[0]
        O, Cg, KH, KW = w.shape
        win = windows(x, (KH, KW), stride, padding, dilation, 0)
        OH, OW = win.shape[2:4]
        cols = (win.reshape(N, groups, Cg, OH, OW, KH, KW).transpose(1, 2, 5, 6, 0, 3, 4)
                .reshape(groups, Cg * KH * KW, N * OH * OW))
        self.w = w.reshape(groups, O // groups, Cg * KH * KW)
        self.cols = cols if self.needs_input_grad[1] else None
        self.shapes, self.args = (x.shape, w.shape), (stride, padding, dilation)
        y = xp.ascontiguousarray((self.w @ cols).reshape(O, N, OH, OW).transpose(1, 0, 2, 3))
        if bias is not None:
            y += bias[:, None, None]
        return y

    def backward(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        (x_shape, w_shape), groups = self.shapes, self.w.shape[0]
        N, O, OH, OW = grad.shape
        dy = grad.transpose(1, 0, 2, 3).reshape(groups, O // groups, N * OH * OW)
        dx = dw = db = None
        if need_x:
            dcols = (self.w.transpose(0, 2, 1) @ dy).reshape(x_shape[1], w_shape[2], w_shape[3], N, OH, OW)
            dx = col2im(dcols.transpose(3, 0, 4, 5, 1, 2), x_shape, *self.args)
        if need_w:
            dw = (dy @ self.cols.transpose(0, 2, 1)).reshape(w_shape)
        if need_b:
            db = grad.sum(axis=(0, 2, 3))
        return dx, dw, db


class _Pool2d(Function):
    """A reduction of each window of x padded with ``fill`` (dilation 1); subclasses give
    ``reduce(windows) -> y`` and ``spread(grad) -> (N, C, OH, OW, KH, KW)`` for ``col2im``."""

    fill = 0

    def forward(self, x, kernel, stride, padding):
        self.shape, self.kernel, self.args = x.shape, kernel, (stride, padding, (1, 1))
        return self.reduce(windows(x, kernel, stride, padding, (1, 1), self.fill))

    def backward(self, grad):
        return col2im(self.spread(grad), self.shape, *self.args)


class MaxPool2d(_Pool2d):
    """Max over each window of x padded with -inf.

    The gradient goes to one element per window, the first maximum in row-major window order
    (PyTorch's rule for ties). A NaN counts as the maximum, so it propagates; with several NaNs in
    one window the gradient goes to the first (PyTorch's CPU kernel picks the last). Overlapping
    windows add their gradients.
    """

    fill = -float("inf")

    def reduce(self, win):
        flat = win.reshape(win.shape[:4] + (self.kernel[0] * self.kernel[1],))
        self.arg = flat.argmax(axis=-1)
        # gather rather than flat.max: NumPy reduces a short last axis slowly, and argmax is needed anyway
        return get_array_module(win).take_along_axis(flat, self.arg[..., None], -1)[..., 0]

    def spread(self, grad):
        xp = get_array_module(grad)
        taps = xp.arange(self.kernel[0] * self.kernel[1]).reshape(self.kernel)
        return xp.where(self.arg[..., None, None] == taps, grad[..., None, None], 0)


class AvgPool2d(_Pool2d):
    """Mean over each window of x padded with zeros; the padded zeros count (count_include_pad=True)."""

    def reduce(self, win):
        return win.mean(axis=(-2, -1))

    def spread(self, grad):
        share = grad / (self.kernel[0] * self.kernel[1])
        return get_array_module(grad).broadcast_to(share[..., None, None], grad.shape + self.kernel)


def _pool_matrix(xp, n_in, n_out, dtype):
    """(n_out, n_in): row i averages input positions [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    i = xp.arange(n_out)[:, None]
    start, end = i * n_in // n_out, -(-(i + 1) * n_in // n_out)
    pos = xp.arange(n_in)
    return (((pos >= start) & (pos < end)) / (end - start)).astype(dtype)


class AdaptiveAvgPool2d(Function):
    """Average over PyTorch's adaptive windows (rows [floor(i*H/OH), ceil((i+1)*H/OH)), columns alike).

    The windows are separable, so y = A_h @ x @ A_w^T with averaging matrices A_h (OH, H) and
    A_w (OW, W), and dx = A_h^T @ dy @ A_w. (When OH divides H and OW divides W the windows do not
    overlap and ``cubn.nn.functional.adaptive_avg_pool2d`` uses AvgPool2d instead.)
    """

    def forward(self, x, output_size):
        xp = get_array_module(x)
        self.rows = _pool_matrix(xp, x.shape[2], output_size[0], x.dtype)
        self.cols = _pool_matrix(xp, x.shape[3], output_size[1], x.dtype)
        return self.rows @ x @ self.cols.T

    def backward(self, grad):
        return self.rows.T @ grad @ self.cols
