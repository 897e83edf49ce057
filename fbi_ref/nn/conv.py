"""A model's Conv2D layers, forward and adjoint, on the fastest path that computes them exactly.

Two paths compute the same linear map: im2col + matmul (`layers.conv2d_forward`, any kernel, stride and
padding: the reference) and Winograd F(2x2, 3x3) (`winograd`, 3x3 stride-1 'same' only: 2.25x fewer
multiplications). They agree to float32 rounding. `use("im2col")` (or FBI_REF_CONV=im2col) forces the
reference path everywhere, e.g. to compare with another implementation bit for bit.
"""
import contextlib
import os

from fbi_ref.errors import InputError
from fbi_ref.nn import layers as L
from fbi_ref.nn import winograd

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


def transformed(layer):
    """The layer's Winograd kernel U (16, C, O), computed once per kernel array (the adjoint uses views of it).

    Cached on the layer and keyed by the kernel array itself; a Model's kernels are read-only (see
    Model.__init__), so a kernel is changed by assigning a new array, which recomputes it.
    """
    cached = getattr(layer, "_winograd", None)
    if cached is None or cached[0] is not layer.kernel:
        cached = (layer.kernel, winograd.transform_kernel(layer.kernel))
        layer._winograd = cached
    return cached[1]


def convolve(x, kernel, bias, strides, padding, name="conv", u=None):
    """x (N, H, W, C) -> (N, Ho, Wo, O): conv plus bias (None: no bias). u: the Winograd kernel, if known."""
    if _winograd_chosen(kernel, strides, padding, name, x.dtype):
        return winograd.conv3x3(x, winograd.transform_kernel(kernel) if u is None else u, bias, L.scratch)
    return L.conv2d_forward(x, kernel, bias, strides, padding)


def convolve_adjoint(g, kernel, input_hw, strides, padding, name="conv", u=None):
    """g (N, Ho, Wo, O) -> (N, H, W, C): the transposed conv. u: the forward Winograd kernel, if known."""
    if _winograd_chosen(kernel, strides, padding, name, g.dtype):
        u = winograd.transform_kernel(kernel) if u is None else u
        return winograd.conv3x3(g, winograd.adjoint_transformed(u), None, L.scratch)
    return L.conv2d_adjoint(g, kernel, input_hw, strides, padding)


def forward(layer, x):
    """x (N, H, W, C) -> z (N, Ho, Wo, O): the layer's convolution plus bias (Winograd kernels cached)."""
    u = transformed(layer) if _winograd_chosen(layer.kernel, layer.strides, layer.padding, layer.name, x.dtype) else None
    return convolve(x, layer.kernel, layer.bias, layer.strides, layer.padding, layer.name, u)


def adjoint(layer, g, input_hw):
    """g (N, Ho, Wo, O) -> (N, H, W, C): the transpose of the layer's convolution (no bias)."""
    u = transformed(layer) if _winograd_chosen(layer.kernel, layer.strides, layer.padding, layer.name, g.dtype) else None
    return convolve_adjoint(g, layer.kernel, input_hw, layer.strides, layer.padding, layer.name, u)
