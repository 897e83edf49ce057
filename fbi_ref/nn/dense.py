"""The dense layer x @ W + b and the flatten before it, each a forward map and its adjoint.

Dense kernels are (in, out) as Keras stores them, computing x @ W + b; flatten is in Keras's (H, W, C) order.
Adjoints never add a bias: the bias is not part of the linear map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fbi_ref.errors import ArchitectureError
from fbi_ref.nn.weights import WeightedLayer, check_fits, check_kernel


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


@dataclass
class Dense(WeightedLayer):
    """x @ kernel + bias, kernel (in, out) as Keras stores it, then the activation. Fields: name, kernel, bias,
    activation."""
    activation: str = "relu"

    def output_shape(self, shape):
        """(in,) -> (out,)."""
        check_kernel(self)
        if len(shape) != 1:
            raise ArchitectureError(f"layer {self.name!r}: Dense needs a flat input, got {shape}")
        check_fits(self, self.kernel.shape[0], shape[0], "inputs")
        return (self.kernel.shape[1],)

    def pre_activation(self, a):
        """a (N, in) -> z = a @ W + b (N, out)."""
        return dense_forward(a, self.kernel, self.bias)

    def adjoint(self, g, a_in, saved=None):
        """g (N, out) -> (N, in) = g @ W^T."""
        return dense_adjoint(g, self.kernel)

    def apply(self, a, kernel, bias=None):
        """a @ kernel (+ bias) with another kernel of the same shape (LRP's positive and negative parts)."""
        return dense_forward(a, kernel, bias)

    def apply_adjoint(self, g, a_in, kernel):
        """The transpose of `apply` with that kernel."""
        return dense_adjoint(g, kernel)


@dataclass
class Flatten:
    """(N, H, W, C) -> (N, H*W*C) in Keras's H, W, C order."""
    name: str

    kind: ClassVar[str] = "reshape"
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        return (int(np.prod(shape)),)

    def forward(self, a):
        """a (N, H, W, C) -> (N, H*W*C), three times: z, output, nothing saved."""
        y = flatten_forward(a)
        return y, y, None

    def adjoint(self, g, a_in, saved=None):
        """g (N, H*W*C) -> (N, H, W, C) in a_in's shape."""
        return flatten_adjoint(g, a_in.shape[1:])
