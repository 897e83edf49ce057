"""A sequential CNN built from the layer types in `network`, and its forward pass."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from fbi_ref.errors import ArchitectureError, InputError, UnsupportedLayerError
from fbi_ref.nn.activations import softmax
from fbi_ref.nn.network import LAYER_TYPES, Architecture, cast
from fbi_ref.nn.preprocessing import preprocessing as preprocessing_rule
from fbi_ref.nn.weights import frozen


# The most memory one image's activations may take (bytes; VGG16 at 224 x 224 takes 61 MB in float32): a file
# that declares a 100,000 x 100,000 input is refused when the model is built, not when the memory runs out.
MAX_ACTIVATION_BYTES = int(os.environ.get("FBI_REF_MAX_ACTIVATION_BYTES", 2 * 2**30))


@dataclass
class ForwardPass:
    """Everything one forward pass computed, kept for the backward traversals.

    x: the (preprocessed) input (N, H, W, C); outputs: every layer's output (after its activation) by Keras
    layer name; switches: what each layer's adjoint needs from the forward pass (every max-pool's argmax
    (N, Ho, Wo, C)) by name; logits: the last layer's output before softmax (N, K); probs: softmax(logits)
    (N, K); pre_activations: with forward(x, keep_pre_activations=True), the input of each ReLU by layer name.
    """
    x: np.ndarray
    outputs: dict = field(default_factory=dict)
    switches: dict = field(default_factory=dict)
    logits: np.ndarray | None = None
    probs: np.ndarray | None = None
    pre_activations: dict = field(default_factory=dict)

    def at(self, position):
        """The forward value at a position: a layer's output by its name, or x at "input"."""
        return self.x if position == "input" else self.outputs[position]

    def input_of(self, model, name):
        """The input the layer `name` saw: the previous layer's output, or x for the first layer."""
        return self.at(model.input_position(name))


class Model:
    """A sequential convolutional network with Keras layer names, NHWC, preprocessed input (caffe by default).

    Build one with `fbi_ref.load_model(path_or_name)`. `forward(x)` runs it on a batch x of shape
    (N, H, W, C) (already preprocessed, see `fbi_ref.load_image`) and returns a `ForwardPass` with the
    logits, the probabilities and every layer's output by Keras layer name.

    Its weights are read-only, so that what is cached from them (conv.py's Winograd kernels) stays valid: the
    model keeps the read-only arrays it is given (the readers make theirs so) and read-only copies of writeable
    ones, and never changes the caller's arrays or layers. Besides its layers a model carries what belongs to it: class_names, preprocessing (a
    `fbi_ref.nn.preprocessing.Preprocessing`, or its name: 'caffe' for Keras's VGG, 'torchvision', ...), and fbi_defaults
    (FBI's options for this model, e.g. {"k": 0.1, "tau": 0.05, "tau_mode": "relative"}; the paper's values
    where empty). Every model derived from it (`astype`, `with_layers`) keeps them.
    """

    def __init__(self, arch: Architecture, class_names=None, preprocessing="caffe", fbi_defaults=None):
        self.layers = list(arch.layers)
        if any(s is None for s in arch.input_shape) or not all(int(s) >= 1 for s in arch.input_shape):
            raise ArchitectureError(f"{arch.name}: the input size {tuple(arch.input_shape)} is not a fixed, "
                                    f"positive size; give the architecture an input shape")
        self.input_shape = tuple(int(s) for s in arch.input_shape)  # (H, W, C)
        self.name = arch.name
        self.class_names = class_names
        self.preprocessing = preprocessing_rule(preprocessing)
        self.fbi_defaults = dict(fbi_defaults or {})
        self._shapes = self._infer_shapes()
        self.layers = [frozen(layer) for layer in self.layers]

    def __repr__(self):
        return f"Model({self.name!r}, input {self.input_shape}, {len(self.layers)} layers, {self.dtype.__name__})"

    @property
    def dtype(self):
        """The weights' dtype (np.float32 as loaded; np.float64 after astype)."""
        for layer in self.layers:
            if layer.weights:
                return getattr(layer, layer.weights[0]).dtype.type
        return np.float32

    @property
    def activation_bytes(self):
        """The bytes one image's forward pass keeps (its input and every layer's output, in the model's dtype)."""
        return self.activation_count * np.dtype(self.dtype).itemsize

    @property
    def num_classes(self):
        return self._shapes[self.layers[-1].name][-1]

    def index(self, name):
        """Position of the layer called `name`."""
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(f"no layer called {name!r} in {self.name}")

    def layer(self, name):
        return self.layers[self.index(name)]

    def input_position(self, name):
        """The position the layer `name` reads: the previous layer's name, or "input" for the first layer."""
        i = self.index(name)
        return "input" if i == 0 else self.layers[i - 1].name

    def output_shape(self, name):
        """The output shape of a layer without the batch axis."""
        return self._shapes[name]

    def architecture(self):
        """The model's layers and input shape as an Architecture (sharing the weights)."""
        return Architecture(list(self.layers), self.input_shape, self.name)

    def with_layers(self, layers):
        """A model with other layers (e.g. other weights) and everything else of this one: name, class names,
        preprocessing, FBI defaults."""
        arch = Architecture(list(layers), self.input_shape, self.name)
        return Model(arch, self.class_names, self.preprocessing, self.fbi_defaults)

    def astype(self, dtype):
        """A copy of the model with weights of another dtype (float64 for exact tests), defaults and all."""
        return self.with_layers([cast(layer, dtype) for layer in self.layers])

    def check_input(self, x):
        """x as a C-contiguous array of the model's dtype (N, H, W, C), or an InputError saying what is wrong."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"input has shape {x.shape}; {self.name} expects (N, {', '.join(map(str, self.input_shape))})")
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input has dtype {x.dtype}; expected floating point (preprocess images with fbi_ref.load_image)")
        with np.errstate(over="ignore"):  # values beyond the model's dtype become inf, refused below
            x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise InputError(f"input contains NaN or inf (or values beyond {np.dtype(self.dtype).name})")
        return x

    def forward(self, x, keep_pre_activations=False):
        """Run the network on x (N, H, W, C); returns a ForwardPass (logits, probs, outputs by layer name; with
        keep_pre_activations, every ReLU's input too)."""
        x = self.check_input(x)
        fp = ForwardPass(x=x)
        a = x
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not as a warning
            for layer in self.layers:
                z, a, saved = layer.forward(a)
                fp.outputs[layer.name] = a
                if saved is not None:
                    fp.switches[layer.name] = saved
                if keep_pre_activations and getattr(layer, "activation", None) == "relu":
                    fp.pre_activations[layer.name] = z
                fp.logits = z  # the last layer's pre-activation is the logits
            if not np.isfinite(fp.logits).all():
                biggest = float(np.abs(x).max())
                raise InputError(f"the forward pass overflowed {np.dtype(self.dtype).name} (input values up to "
                                 f"{biggest:.3g}; {self.name} expects preprocessed images, see fbi_ref.load_image)")
            fp.probs = softmax(fp.logits)
        return fp

    def predict(self, x):
        """Class probabilities (N, K)."""
        return self.forward(x).probs

    def _infer_shapes(self):
        """Each layer's output shape (without batch), checking that consecutive weights fit together."""
        shapes, shape = {}, self.input_shape
        total = math.prod(shape)
        for layer in self.layers:
            if not isinstance(layer, tuple(LAYER_TYPES.values())):
                raise UnsupportedLayerError(f"layer {layer.name!r} of type {type(layer).__name__} is not supported")
            shape = layer.output_shape(shape)
            shapes[layer.name] = shape
            total += math.prod(shape)
        if total * 8 > MAX_ACTIVATION_BYTES:  # float64, the widest dtype a model is cast to
            raise ArchitectureError(f"{self.name}: one image's activations would take {total * 8:,} bytes, more than "
                                    f"the {MAX_ACTIVATION_BYTES:,} allowed (FBI_REF_MAX_ACTIVATION_BYTES)")
        self.activation_count = total  # per image: the input and every layer's output
        return shapes

