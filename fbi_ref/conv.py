"""A model's Conv2D layers, forward and adjoint, on the fastest path that computes them exactly.

Two paths compute the same linear map: im2col + matmul (`layers.conv2d_forward`, any kernel, stride and
padding: the reference) and Winograd F(2x2, 3x3) (`winograd`, 3x3 stride-1 'same' only: 2.25x fewer
multiplications). They agree to float32 rounding. `use("im2col")` (or FBI_REF_CONV=im2col) forces the
reference path everywhere, e.g. to compare with another implementation bit for bit.
"""
import contextlib
import os

from . import layers as L
from . import winograd
from .errors import InputError

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


def _winograd_applies(layer):
    """True when the Winograd path is chosen for this layer."""
    algorithm = _state["algorithm"]
    fits = winograd.applies(layer.kernel.shape, layer.strides, layer.padding)
    if algorithm == "winograd" and not fits:
        raise InputError(f"layer {layer.name!r}: Winograd needs a 3x3 stride-1 'same' convolution")
    return fits and (algorithm == "winograd" or (algorithm == "auto" and winograd.worthwhile(layer.kernel.shape)))


def transformed(layer):
    """The layer's Winograd kernels (forward, adjoint), each (16, C, O), computed once per kernel array.

    Cached on the layer and keyed by the kernel array itself; a Model's kernels are read-only (see
    Model.__init__), so a kernel is changed by assigning a new array, which recomputes them.
    """
    cached = getattr(layer, "_winograd", None)
    if cached is None or cached[0] is not layer.kernel:
        cached = (layer.kernel, winograd.transform_kernel(layer.kernel),
                  winograd.transform_kernel(winograd.adjoint_kernel(layer.kernel)))
        layer._winograd = cached
    return cached[1], cached[2]


def forward(layer, x):
    """x (N, H, W, C) -> z (N, Ho, Wo, O): the layer's convolution plus bias."""
    if _winograd_applies(layer) and x.dtype == layer.kernel.dtype:
        return winograd.conv3x3(x, transformed(layer)[0], layer.bias, L.scratch)
    return L.conv2d_forward(x, layer.kernel, layer.bias, layer.strides, layer.padding)


def adjoint(layer, g, input_hw):
    """g (N, Ho, Wo, O) -> (N, H, W, C): the transpose of the layer's convolution (no bias)."""
    if _winograd_applies(layer) and g.dtype == layer.kernel.dtype:
        return winograd.conv3x3(g, transformed(layer)[1], None, L.scratch)
    return L.conv2d_adjoint(g, layer.kernel, input_hw, layer.strides, layer.padding)
