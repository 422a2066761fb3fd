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


def channels_last(x, padding):
    """x (N, C, H, W) as a C-contiguous (N, H + 2*ph, W + 2*pw, C) array, zero-padded: one copy."""
    xp = get_array_module(x)
    (ph, pw), (N, C, H, W) = padding, x.shape
    out = xp.zeros((N, H + 2 * ph, W + 2 * pw, C), x.dtype) if ph or pw else xp.empty((N, H, W, C), x.dtype)
    out[:, ph:ph + H, pw:pw + W] = x.transpose(0, 2, 3, 1)
    return out


def windows_last(xl, kernel, stride, dilation):
    """The (N, OH, OW, KH, KW, C) view of a padded channels-last xl (N, H, W, C): [n, i, j, p, q, c] is
    xl[n, i*sh + p*dh, j*sw + q*dw, c]. As ``windows``, read it only."""
    xp = get_array_module(xl)
    oh, ow = output_size(xl.shape[1:3], kernel, stride, (0, 0), dilation)
    sn, sh, sw, sc = xl.strides
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    return xp.lib.stride_tricks.as_strided(xl, (xl.shape[0], oh, ow) + tuple(kernel) + (xl.shape[3],), strides)


def im2col(x, kernel, stride, padding, dilation, groups):
    """cols (G, N*OH*OW, KH*KW*C/G) of x (N, C, H, W): one row per output position, its window in
    (p, q, c) order. Made from the channels-last copy, so the one copy here moves runs of C/G values."""
    N, C = x.shape[:2]
    win = windows_last(channels_last(x, padding), kernel, stride, dilation)
    cols = win.reshape(win.shape[:5] + (groups, C // groups)).transpose(5, 0, 1, 2, 3, 4, 6)
    return cols.reshape(groups, N * win.shape[1] * win.shape[2], kernel[0] * kernel[1] * C // groups)


def weight_matrix(w, groups):
    """w (O, C/G, KH, KW) as (G, KH*KW*C/G, O/G): its rows in the order of im2col's columns."""
    O, Cg, KH, KW = w.shape
    return w.reshape(groups, O // groups, Cg, KH, KW).transpose(0, 3, 4, 2, 1).reshape(groups, KH * KW * Cg, O // groups)


def gemm_nchw(cols, wmat, N, OH, OW):
    """cols_g @ wmat_g for every group, as a C-contiguous (N, O, OH, OW) image."""
    G, _, Og = wmat.shape
    y = (cols @ wmat).reshape(G, N, OH, OW, Og).transpose(1, 0, 4, 2, 3).reshape(N, G * Og, OH, OW)
    return get_array_module(y).ascontiguousarray(y)


class Conv2d(Function):
    """y[n, o] = bias[o] + sum over c in o's group, p, q of w[o, c, p, q] * x_padded[n, c, i*sh + p*dh, j*sw + q*dw].

    x (N, C, H, W), w (O, C/G, KH, KW), bias (O,) or None -> y (N, O, OH, OW), C-contiguous.

    im2col, channels last: x is copied once into (N, H, W, C) order (padded), so that each window
    is KH*KW runs of C/G contiguous values; ``cols`` (G, N*OH*OW, KH*KW*C/G) has one row per output
    position, and each group is one GEMM cols_g @ w_g with w_g (KH*KW*C/G, O/G) (BLAS on the CPU,
    cuBLAS on the GPU). Backward: dw_g = cols_g^T @ dy_g; dbias = sum dy; and dx, the transposed
    convolution, two ways:

    * stride 1: dx is itself a convolution, of dy with the kernel flipped in space and its in/out
      channels swapped, padded by d*(k-1) - p (so dx has x's size): im2col of dy and one GEMM.
    * otherwise (stride > 1, a padding wider than the kernel, or more than twice as many output
      channels as input channels): dcols_g = dy_g @ w_g^T, added back onto the image tap by tap
      (``col2im_last``). Measured at 1 thread on the main job's layers (docs/cpu.md): the flipped
      convolution takes 0.55x, 0.74x and 0.91x of col2im's time for 32->32, 64->64 and 32->64
      channels, and 2.7x for 1->32.
    """

    def forward(self, x, w, bias, stride, padding, dilation, groups):
        N, (KH, KW) = x.shape[0], w.shape[2:]
        OH, OW = output_size(x.shape[2:], (KH, KW), stride, padding, dilation)
        cols = im2col(x, (KH, KW), stride, padding, dilation, groups)
        self.w, self.groups = w, groups
        self.cols = cols if self.needs_input_grad[1] else None
        self.shape, self.args = x.shape, (stride, padding, dilation)
        y = gemm_nchw(cols, weight_matrix(w, groups), N, OH, OW)
        if bias is not None:
            y += bias[:, None, None]
        return y

    def backward(self, grad):
        xp = get_array_module(grad)
        need_x, need_w, need_b = self.needs_input_grad
        (O, Cg, KH, KW), G, (stride, padding, dilation) = self.w.shape, self.groups, self.args
        N, _, OH, OW = grad.shape
        dx = dw = db = None
        if need_x:
            flip_pad = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (KH, KW), padding))
            # the flipped convolution copies O/G values per tap and position (im2col of dy), col2im adds
            # C/G: with many more output than input channels (the first layer, 1 -> 32), col2im is cheaper
            if stride == (1, 1) and min(flip_pad) >= 0 and O <= 2 * G * Cg:
                # w_flip[c, o, p, q] = w[o, c, KH-1-p, KW-1-q], group by group
                flipped = self.w.reshape(G, O // G, Cg, KH, KW).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
                flipped = flipped.reshape(G * Cg, O // G, KH, KW)
                dcols = im2col(grad, (KH, KW), (1, 1), flip_pad, dilation, G)
                dx = gemm_nchw(dcols, weight_matrix(flipped, G), N, *self.shape[2:])
            else:
                dy = xp.ascontiguousarray(grad.reshape(N, G, O // G, OH, OW).transpose(1, 0, 3, 4, 2))
                dcols = dy.reshape(G, N * OH * OW, O // G) @ weight_matrix(self.w, G).transpose(0, 2, 1)
                dcols = dcols.reshape(G, N, OH, OW, KH, KW, Cg).transpose(1, 2, 3, 4, 5, 0, 6)
                dx = col2im_last(dcols, self.shape, stride, padding, dilation)
        if need_w:
            dy = xp.ascontiguousarray(grad.reshape(N, G, O // G, OH, OW).transpose(1, 0, 3, 4, 2))
            dw = (self.cols.transpose(0, 2, 1) @ dy.reshape(G, N * OH * OW, O // G)).reshape(G, KH, KW, Cg, O // G)
            dw = xp.ascontiguousarray(dw.transpose(0, 4, 3, 1, 2)).reshape(O, Cg, KH, KW)
        if need_b:
            db = grad.sum(axis=(0, 2, 3))
        return dx, dw, db


def col2im_last(cols, shape, stride, padding, dilation):
    """Adjoint of ``windows_last`` after ``channels_last``: add cols (N, OH, OW, KH, KW, G, C/G) onto a
    zero image and return it as (N, C, H, W) (a C-contiguous copy, padding cut off).

    Tap (p, q) adds to the strided grid rows p*dh + i*sh, columns q*dw + j*sw of the padded image;
    each of its additions moves runs of C/G contiguous values, and the taps are added in a fixed order.
    """
    xp = get_array_module(cols)
    N, OH, OW, KH, KW, G, Cg = cols.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H, W = shape[2:]
    dx = xp.zeros((N, H + 2 * ph, W + 2 * pw, G, Cg), dtype=cols.dtype)
    for p in range(KH):
        for q in range(KW):
            dx[:, p * dh:p * dh + sh * (OH - 1) + 1:sh, q * dw:q * dw + sw * (OW - 1) + 1:sw] += cols[:, :, :, p, q]
    return xp.ascontiguousarray(dx[:, ph:ph + H, pw:pw + W].reshape(N, H, W, G * Cg).transpose(0, 3, 1, 2))


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

    Windows that tile the image (kernel = stride, no padding, as in MaxPool2d(2)) take a shorter
    road: one copy puts the KH*KW taps of every window side by side, as a contiguous
    (KH*KW, N, C, OH, OW) array, so the maximum over its first axis and the test "which tap won
    first" are elementwise ops on contiguous arrays (vectorized), and the gradient goes back through
    one transposed copy. No (..., KH, KW) windows array is made, and nothing is added.
    """

    fill = -float("inf")

    def forward(self, x, kernel, stride, padding):
        if tuple(kernel) != tuple(stride) or tuple(padding) != (0, 0):
            self.tiled = False
            return super().forward(x, kernel, stride, padding)
        xp = get_array_module(x)
        (N, C, H, W), (kh, kw) = x.shape, kernel
        self.tiled, self.shape, self.kernel = True, x.shape, kernel
        oh, ow = H // kh, W // kw
        taps = (x[:, :, :oh * kh, :ow * kw].reshape(N, C, oh, kh, ow, kw).transpose(3, 5, 0, 1, 2, 4)
                .reshape(kh * kw, N, C, oh, ow))                # tap k = (p, q) in row-major window order
        y = taps[0].copy()
        for tap in taps[1:]:
            xp.maximum(y, tap, out=y)                           # NaN wins, as in the general path
        # the winner of each window: the first tap equal to the maximum (or, in a window holding NaN,
        # the first NaN); ``self.first[k]`` is True where tap k won
        hits = (taps == y) | (taps != taps)
        self.first, seen = xp.empty_like(hits), xp.zeros_like(y, dtype=bool)
        for k in range(kh * kw):
            xp.greater(hits[k], seen, out=self.first[k])       # a hit with no hit before it
            seen |= hits[k]
        return y

    def backward(self, grad):
        if not self.tiled:
            return super().backward(grad)
        xp = get_array_module(grad)
        (N, C, H, W), (kh, kw) = self.shape, self.kernel
        oh, ow = grad.shape[2:]
        taps = grad * self.first
        tiles = taps.reshape(kh, kw, N, C, oh, ow).transpose(2, 3, 4, 0, 5, 1).reshape(N, C, oh * kh, ow * kw)
        if (oh * kh, ow * kw) == (H, W):
            return xp.ascontiguousarray(tiles)
        dx = xp.zeros(self.shape, grad.dtype)                   # the rows and columns no window reaches
        dx[:, :, :oh * kh, :ow * kw] = tiles
        return dx

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
