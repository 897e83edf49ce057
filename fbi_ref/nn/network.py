"""The layer specifications a model is made of (weights in Keras layout) and the model itself."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Conv2D:
    """2-D cross-correlation, kernel (kh, kw, C_in, C_out) HWIO as Keras stores it, bias (C_out,)."""
    name: str
    kernel: np.ndarray
    bias: np.ndarray
    strides: tuple = (1, 1)
    padding: str = "same"  # 'same' (Keras/TF rule) or 'valid'
    activation: str = "relu"  # 'relu' | 'linear' | 'softmax'


@dataclass
class MaxPool2D:
    """Max pooling over (ph, pw) windows moved by strides."""
    name: str
    pool_size: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: str = "valid"


@dataclass
class Flatten:
    """(N, H, W, C) -> (N, H*W*C) in Keras's H, W, C order."""
    name: str


@dataclass
class Dense:
    """x @ kernel + bias, kernel (in, out) as Keras stores it."""
    name: str
    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "relu"


@dataclass
class Activation:
    """A stand-alone activation layer ('relu' | 'linear' | 'softmax')."""
    name: str
    activation: str


@dataclass
class Dropout:
    """Identity at inference; kept so that every Keras layer name has an activation."""
    name: str


@dataclass
class Architecture:
    """What a loader returns: the layers in order and the input shape (H, W, C)."""
    layers: list
    input_shape: tuple
    name: str = "model"
    extra: dict = field(default_factory=dict)
