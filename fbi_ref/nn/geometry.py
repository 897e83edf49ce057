"""Spatial geometry shared by every window op and every reader: output sizes, 'same' padding, bilinear resizing.

'same' padding follows Keras/TensorFlow: out = ceil(size / stride), total padding
max((out - 1) * stride + k - size, 0), of which the smaller half goes *before* (top/left). The ONNX and Keras
readers use the same rule to tell 'same' from 'valid' in a file.
"""
import math

import numpy as np

from fbi_ref.errors import ArchitectureError, InputError


def same_padding(size, k, stride):
    """(out, before, after) of TensorFlow's 'same' padding on one axis: the odd cell goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def output_size(size, k, stride, padding):
    """Output length and padding before, on one spatial axis."""
    if padding == "valid":
        if size < k:
            raise InputError(f"window of size {k} does not fit an input of size {size} with 'valid' padding")
        return (size - k) // stride + 1, 0
    if padding == "same":
        out, before, _ = same_padding(size, k, stride)
        return out, before
    raise InputError(f"padding must be 'same' or 'valid', got {padding!r}")


def geometry(hw, k, strides, padding):
    """(Ho, Wo, pad_top, pad_left) of a window op over an (H, W) input."""
    ho, pt = output_size(hw[0], k[0], strides[0], padding)
    wo, pl = output_size(hw[1], k[1], strides[1], padding)
    return ho, wo, pt, pl


def pooled_shape(layer, shape):
    """(H, W, C) -> (Ho, Wo, C) of a pooling layer (its pool_size, strides, padding); ArchitectureError otherwise."""
    if len(shape) != 3:
        raise ArchitectureError(f"layer {layer.name!r}: {type(layer).__name__} needs an (H, W, C) input, got {shape}")
    ho, wo = geometry(shape[:2], layer.pool_size, layer.strides, layer.padding)[:2]
    return (ho, wo, shape[2])


def bilinear_taps(n_out, n_in):
    """For each of n_out output cells: the two input cells it reads (lo, hi) and the weight of the second, with
    half-pixel centres (align_corners=False) and the positions clamped to the input's edges."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)  # (n_out,)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def bilinear_matrix(n_out, n_in):
    """(n_out, n_in): the same interpolation along one axis as a matrix (what resize_bilinear applies)."""
    lo, hi, weight = bilinear_taps(n_out, n_in)
    m = np.zeros((n_out, n_in))  # (n_out, n_in)
    np.add.at(m, (np.arange(n_out), lo), 1 - weight)
    np.add.at(m, (np.arange(n_out), hi), weight)
    return m


def resize_bilinear(maps, size):
    """maps (N, h, w) -> (N, H, W) in maps' dtype: bilinear with half-pixel centres, as tf.image.resize and
    torch's interpolate(mode='bilinear', align_corners=False) compute it: rows, then columns, two taps each, in
    float64 (O(H W), whatever the sizes)."""
    m = np.asarray(maps, dtype=np.float64)  # (N, h, w)
    (r0, r1, fr), (c0, c1, fc) = bilinear_taps(size[0], m.shape[1]), bilinear_taps(size[1], m.shape[2])
    rows = m[:, r0] * (1 - fr)[:, None] + m[:, r1] * fr[:, None]  # (N, H, w)
    return (rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc).astype(np.asarray(maps).dtype)  # (N, H, W)
