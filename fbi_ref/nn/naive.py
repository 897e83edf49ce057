"""Naive-loop references: each operator written straight from its definition, as a scatter over outputs.

Slow and obviously right; the fast kernels (gathers, im2col + matmul) are tested against these.
"""
import numpy as np

from fbi_ref.nn.geometry import geometry


def conv2d(x, kernel, bias, strides, padding):
    """x (N, H, W, C) -> (N, Ho, Wo, O): the 7-loop cross-correlation."""
    n_img, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    ho, wo, pt, pl = geometry((h, w), (kh, kw), strides, padding)
    z = np.zeros((n_img, ho, wo, o), dtype=np.result_type(x, kernel))  # (N, Ho, Wo, O)
    for n in range(n_img):
        for oh in range(ho):
            for ow in range(wo):
                for f in range(o):
                    for ki in range(kh):
                        for kj in range(kw):
                            for ch in range(c):
                                ih, iw = oh * strides[0] - pt + ki, ow * strides[1] - pl + kj
                                if 0 <= ih < h and 0 <= iw < w:
                                    z[n, oh, ow, f] += x[n, ih, iw, ch] * kernel[ki, kj, ch, f]
    return z + bias if bias is not None else z


def conv2d_adjoint(g, kernel, input_hw, strides, padding):
    """g (N, Ho, Wo, O) -> (N, H, W, C): every output's backward value scattered through its kernel."""
    n_img, ho, wo, o = g.shape
    kh, kw, c, _ = kernel.shape
    h, w = input_hw
    _, _, pt, pl = geometry((h, w), (kh, kw), strides, padding)
    out = np.zeros((n_img, h, w, c), dtype=np.result_type(g, kernel))  # (N, H, W, C)
    for n in range(n_img):
        for oh in range(ho):
            for ow in range(wo):
                for ki in range(kh):
                    for kj in range(kw):
                        ih, iw = oh * strides[0] - pt + ki, ow * strides[1] - pl + kj
                        if 0 <= ih < h and 0 <= iw < w:
                            out[n, ih, iw, :] += kernel[ki, kj, :, :] @ g[n, oh, ow, :]
    return out


def _windows(input_hw, pool_size, strides, padding):
    """Yield (oh, ow, [(ih, iw), ...]) for every pooling window, cells in row-major order, padding left out."""
    h, w = input_hw
    ho, wo, pt, pl = geometry((h, w), pool_size, strides, padding)
    for oh in range(ho):
        for ow in range(wo):
            cells = [(oh * strides[0] - pt + ki, ow * strides[1] - pl + kj)
                     for ki in range(pool_size[0]) for kj in range(pool_size[1])]
            yield oh, ow, [(i, j) for i, j in cells if 0 <= i < h and 0 <= j < w]


def maxpool(x, pool_size, strides, padding):
    """x (N, H, W, C) -> (y, switches): max and first row-major argmax of each window."""
    n_img, h, w, c = x.shape
    ho, wo, _, _ = geometry((h, w), pool_size, strides, padding)
    y = np.zeros((n_img, ho, wo, c), dtype=x.dtype)  # (N, Ho, Wo, C)
    sw = np.zeros((n_img, ho, wo, c), dtype=np.int64)  # (N, Ho, Wo, C)
    for oh, ow, cells in _windows((h, w), pool_size, strides, padding):
        for n in range(n_img):
            for ch in range(c):
                values = [x[n, i, j, ch] for i, j in cells]
                best = int(np.argmax(values))  # np.argmax returns the first maximum
                y[n, oh, ow, ch] = values[best]
                sw[n, oh, ow, ch] = cells[best][0] * w + cells[best][1]
    return y, sw


def unpool_switch(g, switches, input_hw, pool_size, strides, padding):
    """g (N, Ho, Wo, C) -> (N, H, W, C): each value added at its window's switch."""
    n_img, _, _, c = g.shape
    h, w = input_hw
    out = np.zeros((n_img, h, w, c), dtype=g.dtype)  # (N, H, W, C)
    for oh, ow, _ in _windows(input_hw, pool_size, strides, padding):
        for n in range(n_img):
            for ch in range(c):
                s = switches[n, oh, ow, ch]
                out[n, s // w, s % w, ch] += g[n, oh, ow, ch]
    return out


def unpool_replicate(g, input_hw, pool_size, strides, padding, average=False):
    """g (N, Ho, Wo, C) -> (N, H, W, C): each value added to every cell of its window (mean with average)."""
    n_img, _, _, c = g.shape
    h, w = input_hw
    out = np.zeros((n_img, h, w, c), dtype=g.dtype)  # (N, H, W, C)
    count = np.zeros((h, w))  # (H, W)
    for oh, ow, cells in _windows(input_hw, pool_size, strides, padding):
        for i, j in cells:
            out[:, i, j, :] += g[:, oh, ow, :]
            count[i, j] += 1
    if average:
        out /= np.maximum(count, 1)[None, :, :, None]
    return out


def average_pool(x, pool_size, strides, padding):
    """x (N, H, W, C) -> (N, Ho, Wo, C): each window's mean over its cells inside the image."""
    ho, wo, _, _ = geometry(x.shape[1:3], pool_size, strides, padding)
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]), dtype=x.dtype)  # (N, Ho, Wo, C)
    for oh, ow, cells in _windows(x.shape[1:3], pool_size, strides, padding):
        for i, j in cells:
            y[:, oh, ow, :] += x[:, i, j, :]
        y[:, oh, ow, :] /= len(cells)
    return y


def average_pool_adjoint(g, input_hw, pool_size, strides, padding):
    """g (N, Ho, Wo, C) -> (N, H, W, C): each value divided by its window's cell count, added to every cell."""
    out = np.zeros((g.shape[0], *input_hw, g.shape[3]), dtype=g.dtype)  # (N, H, W, C)
    for oh, ow, cells in _windows(input_hw, pool_size, strides, padding):
        for i, j in cells:
            out[:, i, j, :] += g[:, oh, ow, :] / len(cells)
    return out
