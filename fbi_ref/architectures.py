"""Named architectures (VGG16, VGG19), a VGG shape inferred from weights, and a random filler."""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import ArchitectureError, UnsupportedLayerError
from .network import Architecture, Conv2D, Dense, Flatten, MaxPool2D

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


def check_shape(layer: str, what: str, expected, found) -> None:
    """Raise ArchitectureError naming the layer and both shapes unless they are equal."""
    expected, found = tuple(expected), tuple(found)
    if expected != found:
        raise ArchitectureError(f"layer {layer}: {what} expected shape {expected}, found {found}")


def kernel_and_bias(name, arrays) -> tuple:
    """The (kernel, bias) pair of a weighted layer, or ArchitectureError if it has another count."""
    if len(arrays) != 2:
        raise ArchitectureError(f"layer {name}: expected 2 weight arrays (kernel, bias), found {len(arrays)}")
    return arrays


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


def infer_vgg(named_weights, num_pools: int | None = None) -> Architecture:
    """A VGG-shaped model built around (name or None, (kernel, bias) or ()) pairs given in layer order."""
    convs, denses, pool_after = _split_layers(named_weights)
    if not convs:
        raise ArchitectureError("cannot infer a VGG model: the weights hold no convolution kernels")
    if pool_after is None:
        pool_after = _block_ends(convs)
    if num_pools is not None and len(pool_after) != num_pools:
        raise ArchitectureError(
            f"cannot tell where the {num_pools} pooling layers go (the weights suggest "
            f"{len(pool_after)}); pass the architecture explicitly")
    layers = _vgg_convs(convs, pool_after)
    layers += _vgg_top(denses)
    return Architecture(layers, _inferred_input_shape(convs, denses, len(pool_after)), "inferred_vgg")


def _split_layers(named_weights):
    """Conv and dense (name, kernel, bias) lists, and pool positions (conv indices) if pools are named."""
    convs, denses, pool_after = [], [], {}
    for name, arrays in named_weights:
        if not arrays:
            if name and "pool" in name.lower() and convs:
                pool_after[len(convs) - 1] = name
            continue
        kernel, bias = kernel_and_bias(name, arrays)
        if kernel.ndim == 4 and not denses:
            convs.append((name, kernel, bias))
        elif kernel.ndim == 2:
            denses.append((name, kernel, bias))
        else:
            raise UnsupportedLayerError(
                f"layer {name}: a {kernel.ndim}-D kernel {kernel.shape} here does not fit a VGG model")
    return convs, denses, (pool_after or None)


def _block_ends(convs) -> dict:
    """Conv indices that end a block: by block name (blockN_convM) if named, else by channel count."""
    keys = [_block_of(name) for name, _, _ in convs]
    if None in keys or len(set(keys)) == 1:
        # Without names, a VGG block is a run of convolutions with the same number of filters.
        keys = [kernel.shape[3] for _, kernel, _ in convs]
    return {i: None for i in range(len(keys)) if i + 1 == len(keys) or keys[i + 1] != keys[i]}


def _block_of(name) -> str | None:
    """The block a layer name belongs to: 'block2' for 'block2_conv1', 'conv2' for 'conv2_1'."""
    return name.rsplit("_", 1)[0] if name and "_" in name else None


def _vgg_convs(convs, pool_after: dict) -> list:
    """Conv and pool layers, checking that each kernel takes the channels the previous one gives."""
    layers, block, index, channels = [], 1, 1, convs[0][1].shape[2]
    for i, (name, kernel, bias) in enumerate(convs):
        name = name or f"block{block}_conv{index}"
        check_shape(name, "kernel", kernel.shape[:2] + (channels, kernel.shape[3]), kernel.shape)
        check_shape(name, "bias", kernel.shape[3:], bias.shape)
        layers.append(Conv2D(name, kernel, bias))
        channels, index = kernel.shape[3], index + 1
        if i in pool_after:
            layers.append(MaxPool2D(pool_after[i] or f"block{block}_pool"))
            block, index = block + 1, 1
    return layers


def _vgg_top(denses) -> list:
    """Flatten, relu dense layers, and a softmax last layer (nothing for a model without top)."""
    if not denses:
        return []
    layers, features = [Flatten("flatten")], denses[0][1].shape[0]
    for i, (name, kernel, bias) in enumerate(denses, start=1):
        last = i == len(denses)
        name = name or ("predictions" if last else f"fc{i}")
        check_shape(name, "kernel", (features, kernel.shape[1]), kernel.shape)
        check_shape(name, "bias", kernel.shape[1:], bias.shape)
        layers.append(Dense(name, kernel, bias, "softmax" if last else "relu"))
        features = kernel.shape[1]
    return layers


def _inferred_input_shape(convs, denses, num_pools: int) -> tuple:
    """(H, W, C) with H = W read back from the first dense layer's inputs; (None, None, C) without top."""
    in_channels, out_channels = convs[0][1].shape[2], convs[-1][1].shape[3]
    if not denses:
        return (None, None, in_channels)
    name, kernel, _ = denses[0]
    side = int(round(np.sqrt(kernel.shape[0] / out_channels)))
    if side * side * out_channels != kernel.shape[0]:
        raise ArchitectureError(
            f"layer {name}: {kernel.shape[0]} inputs are not a square image of {out_channels} channels")
    return (side * 2 ** num_pools, side * 2 ** num_pools, in_channels)


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
