"""Named architectures (VGG16, VGG19, any VGG-shaped network) with placeholder weights, the layer names Keras
gives a VGG (which every reader uses), and a random filler."""
from __future__ import annotations

import dataclasses

import numpy as np

from fbi_ref.nn.network import (Activation, Affine, Architecture, AveragePool2D, Conv2D, Dense, Flatten,
                                GlobalAveragePool2D, MaxPool2D)
from fbi_ref.nn.weights import placeholder

# Convolutions per block and filters per block, as in keras.applications.
_VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_VGG_FILTERS = (64, 128, 256, 512, 512)
_VGG_FC_UNITS = 4096
_IMAGENET_CLASSES = 1000


def weighted_layers(arch: Architecture) -> list:
    """The layers of `arch` that carry a kernel and a bias, in order."""
    return [layer for layer in arch.layers if layer.weights]


def keras_vgg_names(layers) -> list:
    """The names keras.applications gives a VGG's layers, by their types in order: block{b}_conv{i} (i from 1
    in each block), block{b}_pool (a max or average pool, which ends block b), flatten, fc{i} (the i-th Dense),
    predictions (the last Dense), activation_{n} (the n-th stand-alone Activation), batch_normalization_{n} (the
    n-th Affine) and global_average_pooling2d; a layer that has a name keeps it."""
    names, block, conv, dense, activation, affine = [], 1, 0, 0, 0, 0
    denses = sum(isinstance(layer, Dense) for layer in layers)
    for layer in layers:
        if isinstance(layer, Conv2D):
            conv += 1
            names.append(f"block{block}_conv{conv}")
        elif isinstance(layer, (MaxPool2D, AveragePool2D)):
            names.append(f"block{block}_pool")
            block, conv = block + 1, 0
        elif isinstance(layer, Flatten):
            names.append("flatten")
        elif isinstance(layer, Dense):
            dense += 1
            names.append("predictions" if dense == denses else f"fc{dense}")
        elif isinstance(layer, Activation):
            activation += 1
            names.append(f"activation_{activation}")
        elif isinstance(layer, Affine):
            affine += 1
            names.append(f"batch_normalization_{affine}")
        elif isinstance(layer, GlobalAveragePool2D):
            names.append("global_average_pooling2d")
        else:
            names.append(layer.name)
    return names


def named_like_keras(layers) -> list:
    """The layers, each one without a name ('' or None) given its Keras VGG name (see keras_vgg_names)."""
    return [layer if layer.name else dataclasses.replace(layer, name=name)
            for layer, name in zip(layers, keras_vgg_names(layers))]


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
    for convs, width in zip(blocks, filters):
        for _ in range(convs):
            layers.append(_conv((3, 3, channels, width)))
            channels = width
        layers.append(MaxPool2D(""))
    if not include_top:
        # Without top any size works; the default is the size the weights were trained at.
        return Architecture(named_like_keras(layers), (input_size, input_size, 3), name=f"{name}_notop")
    side = input_size // 2 ** len(blocks)
    layers += [
        Flatten(""),
        _dense((side * side * channels, fc_units), "relu"),
        _dense((fc_units, fc_units), "relu"),
        _dense((fc_units, classes), "softmax"),
    ]
    return Architecture(named_like_keras(layers), (input_size, input_size, 3), name=name)


def _conv(kernel_shape: tuple) -> Conv2D:
    """A 'same' relu convolution with placeholder weights (named later)."""
    return Conv2D("", placeholder(kernel_shape), placeholder(kernel_shape[-1:]))


def _dense(kernel_shape: tuple, activation: str) -> Dense:
    """A dense layer with placeholder weights (named later)."""
    return Dense("", placeholder(kernel_shape), placeholder(kernel_shape[-1:]), activation)


def random_weights(arch: Architecture, seed: int, dtype=np.float32) -> Architecture:
    """A copy of `arch` with He-normal kernels and small random biases, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return dataclasses.replace(arch, layers=[_randomized(layer, rng, dtype) for layer in arch.layers])


def _randomized(layer, rng, dtype):
    """One layer with fresh random weights (weightless layers are returned as they are)."""
    if not layer.weights:
        return layer
    shape = layer.kernel.shape
    fan_in = int(np.prod(shape[:-1]))
    kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    # Non-zero biases so that a test notices a bias that is dropped or put on the wrong layer.
    bias = rng.standard_normal(shape[-1:], dtype=np.float32) * np.float32(0.01)
    kernel, bias = kernel.astype(dtype, copy=False), bias.astype(dtype, copy=False)
    return dataclasses.replace(layer, kernel=kernel, bias=bias)
