"""Average pooling over windows (AveragePooling2D) and over the whole image (GlobalAveragePooling2D), each a
forward map and its adjoint.

A window's mean is over its cells inside the image: padding is not counted, as Keras's 'same' average pooling
and ONNX's AveragePool (count_include_pad=0) compute it. Both maps are linear and have no weights: the adjoint
spreads g / (the window's cell count) over the window (over the whole image for the global mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fbi_ref.errors import ArchitectureError
from fbi_ref.nn.geometry import pooled_shape
from fbi_ref.nn.pooling import unpool_replicate, window_sum


def window_cells(input_hw, pool_size, strides, padding):
    """(Ho, Wo) float64: how many cells of the image each window covers (padding left out)."""
    ones = np.ones((1, *input_hw, 1))  # (1, H, W, 1)
    return window_sum(ones, pool_size, strides, padding)[0, :, :, 0]


def average_forward(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """x (N, H, W, C) -> (N, Ho, Wo, C): each window's mean over its cells inside the image."""
    cells = window_cells(x.shape[1:3], pool_size, strides, padding).astype(x.dtype)  # (Ho, Wo)
    return window_sum(x, pool_size, strides, padding) / cells[None, :, :, None]


def average_adjoint(g, input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """g (N, Ho, Wo, C) -> (N, H, W, C): g / (cell count) added over each window (overlaps add up)."""
    cells = window_cells(input_hw, pool_size, strides, padding).astype(g.dtype)  # (Ho, Wo)
    return unpool_replicate(g / cells[None, :, :, None], input_hw, pool_size, strides, padding)


@dataclass
class AveragePool2D:
    """The mean over (ph, pw) windows moved by strides, padding not counted."""
    name: str
    pool_size: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: str = "valid"

    kind: ClassVar[str] = "average"  # linear, weightless: walked back by a method's average rule
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        """(H, W, C) -> (Ho, Wo, C)."""
        return pooled_shape(self, shape)

    def forward(self, a):
        """a (N, H, W, C) -> (y, y, None), y (N, Ho, Wo, C) the window means."""
        y = average_forward(a, self.pool_size, self.strides, self.padding)
        return y, y, None

    def pre_activation(self, a):
        """The window means (no activation, no bias)."""
        return self.forward(a)[0]

    def adjoint(self, g, a_in, saved=None):
        """g (N, Ho, Wo, C) -> (N, H, W, C): spread over each window, divided by its cell count."""
        return average_adjoint(g, a_in.shape[1:3], self.pool_size, self.strides, self.padding)

    def replicate(self, g, a_in, average=True):
        """g (N, Ho, Wo, C) -> (N, H, W, C): each value copied over its window, averaged (or summed) where
        windows overlap (FBI's max-pool reading, offered at average pools too)."""
        return unpool_replicate(g, a_in.shape[1:3], self.pool_size, self.strides, self.padding, average=average)


@dataclass
class GlobalAveragePool2D:
    """(N, H, W, C) -> (N, C): the mean over the whole image, per channel."""
    name: str

    kind: ClassVar[str] = "average"
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        """(H, W, C) -> (C,)."""
        if len(shape) != 3:
            raise ArchitectureError(f"layer {self.name!r}: GlobalAveragePool2D needs an (H, W, C) input, got {shape}")
        return (shape[2],)

    def forward(self, a):
        """a (N, H, W, C) -> (y, y, None), y (N, C)."""
        y = a.mean(axis=(1, 2))  # (N, C)
        return y, y, None

    def pre_activation(self, a):
        """The per-channel means (no activation, no bias)."""
        return self.forward(a)[0]

    def adjoint(self, g, a_in, saved=None):
        """g (N, C) -> (N, H, W, C): g / (H W) at every pixel."""
        n, h, w, c = a_in.shape
        return np.broadcast_to((g / (h * w))[:, None, None, :], (n, h, w, c)).copy()  # (N, H, W, C)

    def replicate(self, g, a_in, average=True):
        """g (N, C) -> (N, H, W, C): each value copied over the whole image."""
        n, h, w, c = a_in.shape
        return np.broadcast_to(g[:, None, None, :], (n, h, w, c)).copy()  # (N, H, W, C)
