"""ReLU and softmax with their Jacobians, and the two layers that hold no weights: Activation and Dropout.

ReLU and softmax are not linear: their "adjoint" is the transpose of their Jacobian at the forward point,
the linear map that the chain rule (the gradient) carries a backward signal through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fbi_ref.errors import UnsupportedLayerError

ACTIVATIONS = ("relu", "linear", "softmax")


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


def activate(z, activation):
    """Apply a named activation ('relu' | 'linear' | 'softmax')."""
    if activation == "relu":
        return relu(z)
    if activation == "linear":
        return z
    if activation == "softmax":
        return softmax(z)
    raise UnsupportedLayerError(f"activation {activation!r} is not supported (relu, linear, softmax are)")


@dataclass
class Activation:
    """A stand-alone activation layer ('relu' | 'linear' | 'softmax'): z is its input, its output activate(z)."""
    name: str
    activation: str

    kind: ClassVar[str] = "identity"  # its own map is the identity; the walk applies the ReLU rule before it
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        return shape

    def forward(self, a):
        """a -> (z = a, activate(a), None)."""
        return a, activate(a, self.activation), None

    def adjoint(self, g, a_in, saved=None):
        """The identity: the activation's own rule is the walk's (methods/traversal.py)."""
        return g


@dataclass
class Dropout:
    """The identity at inference; kept so that every Keras layer name has an activation."""
    name: str

    kind: ClassVar[str] = "identity"
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        return shape

    def forward(self, a):
        """a -> (a, a, None)."""
        return a, a, None

    def adjoint(self, g, a_in, saved=None):
        """The identity."""
        return g
