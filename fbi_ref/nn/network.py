"""Every layer type, by name (the registry the model, the walk, the readers and reference files use), and
the Architecture a reader returns.

Each type lives beside its forward map, adjoint and output shape: Conv2D in conv.py, MaxPool2D in pooling.py
(a global max-pool is one whose window is the whole image, then a Flatten), AveragePool2D and
GlobalAveragePool2D in averaging.py, Dense and Flatten in
dense.py, Affine (an unfolded batch norm) in affine.py, Activation and Dropout in activations.py. Every one is a
small dataclass with

    kind           which rule of a method's table walks it back: 'linear' (a kernel and a bias), 'pool' (max
                   pooling), 'average' (average pooling), or 'reshape' / 'identity' (the layer's own adjoint,
                   whatever the method; see methods/traversal.py)
    weights        the names of its weight arrays (('kernel', 'bias') or ())
    output_shape(shape)         its output shape (no batch axis) on an input of `shape`, or ArchitectureError
    forward(a)                  (pre-activation z, output after the activation, what the adjoint needs or None)
    adjoint(g, a_in, saved)     the transposed linear map (no bias), from its pre-activation z back to its input
                                (the walk applies the method's rule for the fused activation first)

A new layer type is a module with such a class, one line in LAYER_TYPES, its adjoint identity in
tests/test_layers.py, and what each method does with its kind in the methods' rule tables.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fbi_ref.nn.activations import Activation, Dropout
from fbi_ref.nn.affine import Affine
from fbi_ref.nn.averaging import AveragePool2D, GlobalAveragePool2D
from fbi_ref.nn.conv import Conv2D
from fbi_ref.nn.dense import Dense, Flatten
from fbi_ref.nn.pooling import MaxPool2D
from fbi_ref.nn.weights import read_only

LAYER_TYPES = {layer_type.__name__: layer_type for layer_type in (
    Conv2D, MaxPool2D, Flatten, Dense, Activation, Dropout,
    AveragePool2D, GlobalAveragePool2D, Affine)}


@dataclass
class Architecture:
    """What a reader returns: the layers in order and the input shape (H, W, C)."""
    layers: list
    input_shape: tuple
    name: str = "model"
    extra: dict = field(default_factory=dict)


def describe(layer):
    """A layer's type and settings (no weights) as plain values, e.g. {'name': 'block1_pool', 'type':
    'MaxPool2D', 'pool_size': (2, 2), 'strides': (2, 2), 'padding': 'valid'}; weighted layers add
    'kernel_shape'. `rebuild` takes it back."""
    out = {"name": layer.name, "type": type(layer).__name__}
    out.update({f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)
                if f.name != "name" and f.name not in layer.weights})
    if layer.weights:
        out["kernel_shape"] = tuple(layer.kernel.shape)
    return out


def rebuild(spec, weights):
    """The layer a `describe` record names, with its weights {name: array}; KeyError for an unknown type."""
    layer_type = LAYER_TYPES[spec["type"]]
    values = {}
    for f in dataclasses.fields(layer_type):
        if f.name in layer_type.weights:
            values[f.name] = weights[f.name]
        elif f.name in spec:
            value = spec[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return layer_type(**values)


def cast(layer, dtype):
    """The layer with its weights in another dtype (the same layer if it has none)."""
    if not layer.weights:
        return layer
    return dataclasses.replace(layer, **{w: read_only(getattr(layer, w).astype(dtype)) for w in layer.weights})
