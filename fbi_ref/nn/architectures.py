"""Named architectures (VGG16, VGG19, any VGG-shaped network) with placeholder weights, and a random filler."""
from __future__ import annotations

import dataclasses

import numpy as np

from fbi_ref.nn.network import Architecture, Conv2D, Dense, Flatten, MaxPool2D

# Convolutions per block and filters per block, as in keras.applications.
_VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_VGG_FILTERS = (64, 128, 256, 512, 512)
_VGG_FC_UNITS = 4096
_IMAGENET_CLASSES = 1000


def placeholder(shape) -> np.ndarray:
    """A read-only float32 array of the given shape that takes no memory, for weights still to load."""
    # A zero-strided view knows its shape, which is all a loader needs to check a file against it.
    return np.broadcast_to(np.float32(0), tuple(shape))


def is_placeholder(array) -> bool:
    """True for an array made by `placeholder` (or any other all-zero-stride view)."""
    return array.ndim > 0 and not any(array.strides)


def weighted_layers(arch: Architecture) -> list:
    """The layers of `arch` that carry a kernel and a bias, in order."""
    return [layer for layer in arch.layers if isinstance(layer, (Conv2D, Dense))]


def vgg16(include_top: bool = True) -> Architecture:
    """keras.applications.VGG16 (224x224x3, 1000 classes) with placeholder weights to be loaded."""
    return _vgg("vgg16", include_top)


def vgg19(include_top: bool = True) -> Architecture:
    """keras.applications.VGG19 (224x224x3, 1000 classes) with placeholder weights to be loaded."""
    return _vgg("vgg19", include_top)


def _vgg(name: str, include_top: bool) -> Architecture:
    """A keras.applications VGG with Keras's layer names."""
    return vgg(name, _VGG_BLOCKS[name], _VGG_FILTERS, _VGG_FC_UNITS, _IMAGENET_CLASSES, 224, include_top)


def vgg(name, blocks, filters, fc_units, classes, input_size, include_top=True) -> Architecture:
    """A VGG-type network with Keras's layer names: `blocks` convs per block with `filters` channels,
    a 2x2 max-pool after each block, then fc1, fc2 (`fc_units` wide, relu) and predictions (softmax)."""
    layers, channels = [], 3
    for block, (convs, width) in enumerate(zip(blocks, filters), start=1):
        for index in range(1, convs + 1):
            layers.append(_conv(f"block{block}_conv{index}", (3, 3, channels, width)))
            channels = width
        layers.append(MaxPool2D(f"block{block}_pool"))
    if not include_top:
        # Without top any size works; the default is the size the weights were trained at.
        return Architecture(layers, (input_size, input_size, 3), name=f"{name}_notop")
    side = input_size // 2 ** len(blocks)
    layers += [
        Flatten("flatten"),
        _dense("fc1", (side * side * channels, fc_units), "relu"),
        _dense("fc2", (fc_units, fc_units), "relu"),
        _dense("predictions", (fc_units, classes), "softmax"),
    ]
    return Architecture(layers, (input_size, input_size, 3), name=name)


def _conv(name: str, kernel_shape: tuple) -> Conv2D:
    """A 'same' relu convolution with placeholder weights."""
    return Conv2D(name, placeholder(kernel_shape), placeholder(kernel_shape[-1:]))


def _dense(name: str, kernel_shape: tuple, activation: str) -> Dense:
    """A dense layer with placeholder weights."""
    return Dense(name, placeholder(kernel_shape), placeholder(kernel_shape[-1:]), activation)


def random_weights(arch: Architecture, seed: int, dtype=np.float32) -> Architecture:
    """A copy of `arch` with He-normal kernels and small random biases, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return dataclasses.replace(arch, layers=[_randomized(layer, rng, dtype) for layer in arch.layers])


def _randomized(layer, rng, dtype):
    """One layer with fresh random weights (weightless layers are returned as they are)."""
    if not isinstance(layer, (Conv2D, Dense)):
        return layer
    shape = layer.kernel.shape
    fan_in = int(np.prod(shape[:-1]))
    kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    # Non-zero biases so that a test notices a bias that is dropped or put on the wrong layer.
    bias = rng.standard_normal(shape[-1:], dtype=np.float32) * np.float32(0.01)
    kernel, bias = kernel.astype(dtype, copy=False), bias.astype(dtype, copy=False)
    return dataclasses.replace(layer, kernel=kernel, bias=bias)
