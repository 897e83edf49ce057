"""Every layer as a pair: a forward map and its adjoint (the transposed linear map), in NHWC.

For the two nonlinear layers, ReLU and softmax, the adjoint is that of their Jacobian at the forward point.

Conventions (the ones a re-implementation must match):
- Layout NHWC; conv kernels HWIO (kh, kw, C_in, C_out), cross-correlation (not flipped) as Keras computes it;
  dense kernels (in, out) computing x @ W + b; flatten in (H, W, C) order.
- 'same' padding follows Keras/TensorFlow: out = ceil(size / stride), total padding
  max((out - 1) * stride + k - size, 0), of which the smaller half goes *before* (top/left).
- Max-pool switches are flat indices ih * W + iw into the input plane; ties go to the first maximum in
  row-major window order; 'same' padding cells never win.
- Adjoints never add a bias: the bias is not part of the linear map.
"""
import math
import threading

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.nn import kernels


def output_size(size, k, stride, padding):
    """Output length and padding before, on one spatial axis."""
    if padding == "valid":
        if size < k:
            raise InputError(f"window of size {k} does not fit an input of size {size} with 'valid' padding")
        return (size - k) // stride + 1, 0
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2
    raise InputError(f"padding must be 'same' or 'valid', got {padding!r}")


def geometry(hw, k, strides, padding):
    """(Ho, Wo, pad_top, pad_left) of a window op over an (H, W) input."""
    ho, pt = output_size(hw[0], k[0], strides[0], padding)
    wo, pl = output_size(hw[1], k[1], strides[1], padding)
    return ho, wo, pt, pl


# ---------------------------------------------------------------- convolution

# Patches of several images are gathered into one matrix (one big matmul instead of many small ones), as
# long as that matrix stays under this size; VGG16's early layers at 224x224 go one image at a time.
COLS_BUDGET_BYTES = 64 * 2**20


_local = threading.local()


def scratch(shape, dtype, slot=0):
    """A reusable (per thread) work array; `slot` tells apart arrays needed at the same time.

    A fresh array per call would be page-faulted in by the kernel that fills it, which costs more than the
    copy itself (docs/performance.md). The contents are garbage: callers overwrite them.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffers = _local.__dict__.setdefault("buffers", {})
    if slot not in buffers or buffers[slot].nbytes < nbytes:
        buffers[slot] = np.empty(nbytes, dtype=np.uint8)
    return buffers[slot][:nbytes].view(dtype).reshape(shape)


def image_chunks(n, ho, wo, patch, itemsize):
    """Slices of the batch whose im2col matrices (Ho*Wo, patch) fit in COLS_BUDGET_BYTES together."""
    per_image = ho * wo * patch * itemsize
    step = max(1, min(n, COLS_BUDGET_BYTES // max(per_image, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="same"):
    """x (N, H, W, C) -> z (N, Ho, Wo, O): im2col patches times the kernel matrix, plus bias."""
    kh, kw, c, o = kernel.shape
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    ho, wo, pt, pl = geometry(x.shape[1:3], (kh, kw), strides, padding)
    w_mat = kernel.reshape(kh * kw * c, o)  # (kh*kw*C, O)
    z = np.empty((n, ho, wo, o), dtype=x.dtype)  # (N, Ho, Wo, O)
    for part in image_chunks(n, ho, wo, kh * kw * c, x.itemsize):
        m = part.stop - part.start
        cols = scratch((m, ho, wo, kh, kw, c), x.dtype)  # (m, Ho, Wo, kh, kw, C)
        kernels.im2col(x[part], kh, kw, strides[0], strides[1], pt, pl, cols)
        np.matmul(cols.reshape(m * ho * wo, -1), w_mat, out=z[part].reshape(m * ho * wo, o))  # (m*Ho*Wo, O)
    if bias is not None:
        z += bias  # (N, Ho, Wo, O)
    return z


def conv2d_adjoint(g, kernel, input_hw, strides=(1, 1), padding="same"):
    """g (N, Ho, Wo, O) -> (N, H, W, C): the transpose of x -> conv(x) (no bias), i.e. the 'deconvolution'."""
    kh, kw, c, o = kernel.shape
    g = np.ascontiguousarray(g)
    n, ho, wo, _ = g.shape
    ho2, wo2, pt, pl = geometry(input_hw, (kh, kw), strides, padding)
    if (ho2, wo2) != (ho, wo):
        raise InputError(f"backward signal of spatial size {(ho, wo)} does not fit input {tuple(input_hw)}")
    w_mat = kernel.reshape(kh * kw * c, o)  # (kh*kw*C, O)
    out = np.empty((n, *input_hw, c), dtype=g.dtype)  # (N, H, W, C)
    for part in image_chunks(n, ho, wo, kh * kw * c, g.itemsize):
        m = part.stop - part.start
        cols = scratch((m, ho, wo, kh, kw, c), g.dtype)  # (m, Ho, Wo, kh, kw, C)
        np.matmul(g[part].reshape(m * ho * wo, o), w_mat.T, out=cols.reshape(m * ho * wo, -1))
        kernels.col2im(cols, strides[0], strides[1], pt, pl, out[part])
    return out


def conv2d_kernel_adjoint(x, g, kernel_shape, strides=(1, 1), padding="same"):
    """x (N, H, W, C), g (N, Ho, Wo, O) -> (kh, kw, C, O): the transpose of kernel -> conv(x; kernel).

    This is the gradient of <conv(x; K), g> with respect to K, the weight gradient used in training.
    """
    kh, kw, c, o = kernel_shape
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    ho, wo, pt, pl = geometry(x.shape[1:3], (kh, kw), strides, padding)
    out = np.zeros((kh * kw * c, o), dtype=x.dtype)  # (kh*kw*C, O)
    for part in image_chunks(n, ho, wo, kh * kw * c, x.itemsize):
        m = part.stop - part.start
        cols = scratch((m, ho, wo, kh, kw, c), x.dtype)  # (m, Ho, Wo, kh, kw, C)
        kernels.im2col(x[part], kh, kw, strides[0], strides[1], pt, pl, cols)
        out += cols.reshape(m * ho * wo, -1).T @ g[part].reshape(m * ho * wo, o)
    return out.reshape(kernel_shape)


# ---------------------------------------------------------------- max pooling

def maxpool_forward(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """x (N, H, W, C) -> (y (N, Ho, Wo, C), switches (N, Ho, Wo, C) int64 flat argmax ih * W + iw)."""
    n, h, w, c = x.shape
    ho, wo, pt, pl = geometry((h, w), pool_size, strides, padding)
    y = np.empty((n, ho, wo, c), dtype=x.dtype)  # (N, Ho, Wo, C)
    switches = np.empty((n, ho, wo, c), dtype=np.int64)  # (N, Ho, Wo, C)
    kernels.maxpool(np.ascontiguousarray(x), *pool_size, *strides, pt, pl, y, switches)
    return y, switches


def pick_switches(x, switches):
    """x (N, H, W, C), switches (N, Ho, Wo, C) -> x at the switch positions (N, Ho, Wo, C); linear in x."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)  # (N, H*W, C)
    ho, wo = switches.shape[1:3]
    idx = switches.reshape(n, ho * wo, c)  # (N, Ho*Wo, C)
    return np.take_along_axis(flat, idx, axis=1).reshape(n, ho, wo, c)


def unpool_switch(g, switches, input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """g (N, Ho, Wo, C) -> (N, H, W, C): each value goes back to its window's argmax (adjoint of pick_switches)."""
    ho, wo, pt, pl = geometry(input_hw, pool_size, strides, padding)
    out = np.empty((g.shape[0], *input_hw, g.shape[3]), dtype=g.dtype)  # (N, H, W, C)
    kernels.unpool_switch(np.ascontiguousarray(g), switches, *pool_size, *strides, pt, pl, out)
    return out


def window_sum(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """x (N, H, W, C) -> (N, Ho, Wo, C): the sum over each pooling window (padding counts as zero)."""
    n, h, w, c = x.shape
    ho, wo, pt, pl = geometry((h, w), pool_size, strides, padding)
    ph, pw = pool_size
    hp, wp = max(h + pt, (ho - 1) * strides[0] + ph), max(w + pl, (wo - 1) * strides[1] + pw)
    xp = np.zeros((n, hp, wp, c), dtype=x.dtype)  # (N, Hp, Wp, C)
    xp[:, pt:pt + h, pl:pl + w] = x
    out = np.zeros((n, ho, wo, c), dtype=x.dtype)  # (N, Ho, Wo, C)
    for ki in range(ph):
        for kj in range(pw):
            out += xp[:, ki:ki + (ho - 1) * strides[0] + 1:strides[0], kj:kj + (wo - 1) * strides[1] + 1:strides[1]]
    return out


def unpool_replicate(g, input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid", average=False):
    """g (N, Ho, Wo, C) -> (N, H, W, C): copy each value over its window, summing where windows overlap.

    average=True takes the mean over the covering windows instead (the FBI paper's rule for overlapping
    windows); for non-overlapping windows (2x2, stride 2) both are the same.
    """
    ho, wo, pt, pl = geometry(input_hw, pool_size, strides, padding)
    out = np.empty((g.shape[0], *input_hw, g.shape[3]), dtype=g.dtype)  # (N, H, W, C)
    kernels.unpool_replicate(np.ascontiguousarray(g), *pool_size, *strides, pt, pl, average, out)
    return out


def window_counts(input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """(H, W) float64: how many pooling windows cover each input cell."""
    ones = np.ones((1, *geometry(input_hw, pool_size, strides, padding)[:2], 1))  # (1, Ho, Wo, 1)
    return unpool_replicate(ones, input_hw, pool_size, strides, padding)[0, :, :, 0]


# ---------------------------------------------------------------- dense, flatten, activations

def dense_forward(x, kernel, bias):
    """x (N, in) -> z (N, out) = x @ W + b."""
    z = x @ kernel  # (N, out)
    return z + bias if bias is not None else z


def dense_adjoint(g, kernel):
    """g (N, out) -> (N, in) = g @ W^T (no bias)."""
    return g @ kernel.T  # (N, in)


def flatten_forward(x):
    """x (N, H, W, C) -> (N, H*W*C) in Keras's (H, W, C) order."""
    return x.reshape(x.shape[0], -1)


def flatten_adjoint(g, input_shape):
    """g (N, H*W*C) -> (N, H, W, C)."""
    return g.reshape(g.shape[0], *input_shape)


# ReLU and softmax are not linear: their "adjoint" is the transpose of their Jacobian at the forward point,
# the linear map that the chain rule (the gradient) carries a backward signal through.

def relu(z):
    """Elementwise max(z, 0)."""
    return np.maximum(z, 0)


def relu_adjoint(g, a_out):
    """g -> J^T g with J = diag[z > 0], the ReLU's Jacobian at z, read off its output a_out = relu(z).

    J is diagonal, so J^T = J: the mask of the units that were active (at z = 0 the derivative is taken as 0).
    """
    return g * (a_out > 0)  # multiplying by a boolean mask: several times faster than np.where here


def softmax(z):
    """z (N, K) -> probabilities (N, K); the row maximum is subtracted first so exp never overflows."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # (N, K)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_adjoint(g, p):
    """g (N, K) -> J^T g = p * (g - <p, g>), J = diag(p) - p p^T the softmax's Jacobian at p = softmax(z).

    J is symmetric, so J^T g = J g. With g = e_c this is the gradient of the probability p_c w.r.t. z.
    """
    return p * (g - (p * g).sum(axis=-1, keepdims=True))  # (N, K)


# ---------------------------------------------------------------- input preprocessing

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_forward(rgb):
    """rgb (N, H, W, 3) in 0..255 -> caffe input (N, H, W, 3): channels reversed to BGR, mean subtracted."""
    return rgb[..., ::-1] - CAFFE_MEAN_BGR.astype(rgb.dtype)


def preprocess_adjoint(g):
    """g (N, H, W, 3) w.r.t. the caffe input -> w.r.t. the RGB image (the mean shift has no adjoint part)."""
    return g[..., ::-1]
