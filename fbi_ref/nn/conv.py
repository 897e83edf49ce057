"""The Conv2D layer: cross-correlation as Keras computes it, its adjoint, and the path that computes them.

Kernels are HWIO (kh, kw, C_in, C_out), not flipped; 'same' padding follows Keras/TensorFlow (geometry.py).
Adjoints never add a bias: the bias is not part of the linear map.

Two paths compute the same linear map: im2col + matmul (`conv2d_forward`, any kernel, stride and padding:
the reference) and Winograd F(2x2, 3x3) (`winograd`, 3x3 stride-1 'same' only: 2.25x fewer multiplications).
They agree to float32 rounding. `use("im2col")` (or FBI_REF_CONV=im2col) forces the reference path
everywhere, e.g. to compare with another implementation bit for bit.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np

from fbi_ref.errors import ArchitectureError, InputError
from fbi_ref.nn import kernels, winograd
from fbi_ref.nn.geometry import geometry
from fbi_ref.nn.memory import scratch
from fbi_ref.nn.weights import WeightedLayer, check_fits, check_kernel

# Patches of several images are gathered into one matrix (one big matmul instead of many small ones), as
# long as that matrix stays under this size; VGG16's early layers at 224x224 go one image at a time.
COLS_BUDGET_BYTES = 64 * 2**20


def image_chunks(n, ho, wo, patch, itemsize):
    """Slices of the batch whose im2col matrices (Ho*Wo, patch) fit in COLS_BUDGET_BYTES together."""
    per_image = ho * wo * patch * itemsize
    step = max(1, min(n, COLS_BUDGET_BYTES // max(per_image, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# ---------------------------------------------------------------- the reference path: im2col + matmul

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


# ---------------------------------------------------------------- which path

ALGORITHMS = ("auto", "im2col", "winograd")
_state = {"algorithm": os.environ.get("FBI_REF_CONV", "auto")}


@contextlib.contextmanager
def use(algorithm):
    """Within the block, compute convolutions with `algorithm` ('auto' | 'im2col' | 'winograd')."""
    if algorithm not in ALGORITHMS:
        raise InputError(f"conv algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    before, _state["algorithm"] = _state["algorithm"], algorithm
    try:
        yield
    finally:
        _state["algorithm"] = before


def _winograd_chosen(kernel, strides, padding, name, dtype):
    """True when the Winograd path computes this convolution (InputError if forced where it cannot)."""
    algorithm = _state["algorithm"]
    fits = winograd.applies(kernel.shape, strides, padding)
    if algorithm == "winograd" and not fits:
        raise InputError(f"layer {name!r}: Winograd needs a 3x3 stride-1 'same' convolution")
    wanted = algorithm == "winograd" or (algorithm == "auto" and winograd.worthwhile(kernel.shape))
    return fits and wanted and dtype == kernel.dtype


def convolve(x, kernel, bias, strides, padding, name="conv", transformed=None):
    """x (N, H, W, C) -> (N, Ho, Wo, O): conv plus bias (None: no bias). transformed() -> the Winograd kernel
    (a cached one), called only when that path computes it."""
    if _winograd_chosen(kernel, strides, padding, name, x.dtype):
        u = transformed() if transformed else winograd.transform_kernel(kernel)
        return winograd.conv3x3(x, u, bias, scratch)
    return conv2d_forward(x, kernel, bias, strides, padding)


def convolve_adjoint(g, kernel, input_hw, strides, padding, name="conv", transformed=None):
    """g (N, Ho, Wo, O) -> (N, H, W, C): the transposed conv. transformed() -> the forward Winograd kernel."""
    if _winograd_chosen(kernel, strides, padding, name, g.dtype):
        u = transformed() if transformed else winograd.transform_kernel(kernel)
        return winograd.conv3x3(g, winograd.adjoint_transformed(u), None, scratch)
    return conv2d_adjoint(g, kernel, input_hw, strides, padding)


# ---------------------------------------------------------------- the layer

@dataclass
class Conv2D(WeightedLayer):
    """2-D cross-correlation, kernel (kh, kw, C_in, C_out) HWIO as Keras stores it, bias (C_out,), then the
    activation; forward and adjoint on the fastest path that computes them exactly (see the module docstring).
    Fields: name, kernel, bias, strides, padding, activation."""
    strides: tuple = (1, 1)
    padding: str = "same"  # 'same' (Keras/TF rule) or 'valid'
    activation: str = "relu"  # 'relu' | 'linear' | 'softmax'

    def output_shape(self, shape):
        """(H, W, C) -> (Ho, Wo, C_out)."""
        check_kernel(self)
        if len(shape) != 3:
            raise ArchitectureError(f"layer {self.name!r}: Conv2D needs an (H, W, C) input, got {shape}")
        kh, kw, c, o = self.kernel.shape
        check_fits(self, c, shape[2], "input channels")
        ho, wo = geometry(shape[:2], (kh, kw), self.strides, self.padding)[:2]
        return (ho, wo, o)

    def pre_activation(self, a):
        """a (N, H, W, C) -> z = conv(a) + b (N, Ho, Wo, O), the Winograd kernel cached when that path computes it."""
        return convolve(a, self.kernel, self.bias, self.strides, self.padding, self.name, self.winograd_kernel)

    def adjoint(self, g, a_in, saved=None):
        """g (N, Ho, Wo, O) -> (N, H, W, C) in a_in's spatial size: the transposed convolution (no bias)."""
        return convolve_adjoint(g, self.kernel, a_in.shape[1:3], self.strides, self.padding, self.name,
                                self.winograd_kernel)

    def apply(self, a, kernel, bias=None):
        """conv(a; kernel) (+ bias) with another kernel of the same shape, on the reference path (LRP's positive
        and negative parts)."""
        return conv2d_forward(a, kernel, bias, self.strides, self.padding)

    def apply_adjoint(self, g, a_in, kernel):
        """The transpose of `apply` with that kernel."""
        return conv2d_adjoint(g, kernel, a_in.shape[1:3], self.strides, self.padding)

    def winograd_kernel(self):
        """The layer's Winograd kernel U (16, C, O), computed once per kernel array (the adjoint uses views of it).

        Cached on the layer and keyed by the kernel array itself; a Model's kernels are read-only (see
        Model.__init__), so a kernel is changed by assigning a new array, which recomputes it.
        """
        cached = getattr(self, "_winograd", None)
        if cached is None or cached[0] is not self.kernel:
            cached = (self.kernel, winograd.transform_kernel(self.kernel))
            self._winograd = cached
        return cached[1]
