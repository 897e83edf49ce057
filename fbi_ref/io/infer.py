"""A VGG-shaped architecture inferred from the weights a file holds (when the file does not describe one)."""
from __future__ import annotations

import numpy as np

from fbi_ref.errors import ArchitectureError, UnsupportedLayerError
from fbi_ref.nn.architectures import named_like_keras
from fbi_ref.nn.network import Architecture, Conv2D, Dense, Flatten, MaxPool2D


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


def infer_vgg(named_weights, num_pools: int | None = None) -> Architecture:
    """A VGG-shaped model built around (name or None, (kernel, bias) or ()) pairs given in layer order.

    Where the max-pools go, first rule that applies: after the convolution before each weightless layer whose
    name contains 'pool' (Keras files list their pools); else at the end of each block of conv names
    ('block2_conv1', 'block2_conv2', ...: the part before the last '_'); else (a conv without a name, or one
    block name for all) at the end of each run of convolutions with the same number of filters, so two
    consecutive blocks of the same width become one (give the architecture explicitly then). `num_pools`,
    when given, must match.
    """
    convs, denses, pool_after = _split_layers(named_weights)
    if not convs:
        raise ArchitectureError("cannot infer a VGG model: the weights hold no convolution kernels")
    if pool_after is None:
        pool_after = _block_ends(convs)
    if num_pools is not None and len(pool_after) != num_pools:
        raise ArchitectureError(
            f"cannot tell where the {num_pools} pooling layers go (the weights suggest "
            f"{len(pool_after)}); pass the architecture explicitly")
    layers = named_like_keras(_vgg_convs(convs, pool_after) + _vgg_top(denses))
    _check_chain(layers)
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
    """Conv and pool layers; those the file does not name are named later."""
    layers = []
    for i, (name, kernel, bias) in enumerate(convs):
        layers.append(Conv2D(name or "", kernel, bias))
        if i in pool_after:
            layers.append(MaxPool2D(pool_after[i] or ""))
    return layers


def _vgg_top(denses) -> list:
    """Flatten, relu dense layers, and a softmax last layer (nothing for a model without top)."""
    if not denses:
        return []
    return [Flatten("flatten")] + [Dense(name or "", kernel, bias, "softmax" if i == len(denses) else "relu")
                                   for i, (name, kernel, bias) in enumerate(denses, start=1)]


def _check_chain(layers) -> None:
    """Each kernel takes the channels (features) the layer of its type before it gives; each bias fits."""
    width = {}  # layer type -> the outputs of the last such layer
    for layer in layers:
        if not layer.weights:
            continue
        ins = width.get(type(layer), layer.kernel.shape[-2])
        check_shape(layer.name, "kernel", layer.kernel.shape[:-2] + (ins, layer.kernel.shape[-1]), layer.kernel.shape)
        check_shape(layer.name, "bias", layer.kernel.shape[-1:], layer.bias.shape)
        width[type(layer)] = layer.kernel.shape[-1]


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
