"""Turn a Keras model config (the JSON in a full-model .h5 or a .keras file) into an Architecture.

Nested models (the `vgg16` base inside a Sequential, as `model.add(base)` writes it) are opened in place. A
Rescaling or Normalization in front of the network becomes the model's preprocessing (`extra['preprocessing']`).
A BatchNormalization becomes an Affine layer with placeholder weights, its settings in `extra['batch_norms']`;
keras_files.py reads its gamma, beta and moving statistics and folds it into the conv or dense layer right before
it where it can. A GlobalMaxPooling2D is a MaxPool2D over the whole image ('<name>_window') and a Flatten
('<name>'), so that every method walks it back as a max-pool.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from fbi_ref.errors import ArchitectureError, InputError, ModelFileError, UnsupportedLayerError
from fbi_ref.nn.activations import ACTIVATIONS
from fbi_ref.nn.geometry import output_size
from fbi_ref.nn.network import (Activation, Affine, Architecture, AveragePool2D, Conv2D, Dense, Dropout, Flatten,
                                GlobalAveragePool2D, MaxPool2D)
from fbi_ref.nn.preprocessing import from_scale_and_offset
from fbi_ref.nn.weights import placeholder

_NESTED = ("Functional", "Sequential", "Model")
_INPUT_MAPS = ("Rescaling", "Normalization")


def architecture_from_config(config: dict) -> Architecture:
    """The layers of a sequential or functional Keras model config, nested models opened, with placeholder
    weights; a leading Rescaling / Normalization as extra['preprocessing'], batch norms' settings as
    extra['batch_norms']."""
    layer_configs = _flattened(_layer_configs(config))
    input_shape = shape = _input_shape(layer_configs, config)
    layer_configs = [c for c in layer_configs if c.get("class_name") != "InputLayer"]
    leading = len(list(itertools.takewhile(lambda c: c.get("class_name") in _INPUT_MAPS, layer_configs)))
    extra = {"batch_norms": {}}
    if leading:
        extra["preprocessing"] = _input_map(layer_configs[:leading], shape)
        extra["input_map"] = True  # the model's own layers: no other preprocessing may replace it
    layers = []
    for layer_config in layer_configs[leading:]:
        built, shape = _build_layer(layer_config, shape)
        if isinstance(built[0], Affine):
            extra["batch_norms"][built[0].name] = _batch_norm_settings(layer_config)
        layers += built
    inner = config.get("config")
    name = inner.get("name", "model") if isinstance(inner, dict) else "model"
    return Architecture(layers, input_shape, name=name, extra=extra)


def _flattened(layer_configs: list, depth=0) -> list:
    """The layer configs with every nested model's layers in its place (its input layer dropped)."""
    if depth > 8:
        raise ModelFileError("models nested more than 8 deep")
    out = []
    for layer_config in layer_configs:
        if not isinstance(layer_config, dict):
            raise ModelFileError("a layer config is not a JSON object")
        if layer_config.get("class_name") in _NESTED:
            inner = _flattened(_layer_configs(layer_config), depth + 1)
            out += [c for c in inner if c.get("class_name") != "InputLayer"] if out else inner
        else:
            out.append(layer_config)
    return out


def _input_map(layer_configs: list, shape: tuple):
    """The Preprocessing of the Rescaling / Normalization layers in front: one per-channel affine map."""
    scale, offset = np.ones(3), np.zeros(3)
    names = []
    for layer_config in layer_configs:
        options = layer_config.get("config", {})
        name = options.get("name") or layer_config.get("class_name")
        names.append(name)
        _require(name, len(shape) == 3 and shape[2] == 3, "an input map on other than RGB images")
        if layer_config["class_name"] == "Rescaling":
            s, o = _per_channel(name, options.get("scale", 1.0)), _per_channel(name, options.get("offset", 0.0))
        else:
            _require(name, not options.get("invert", False), "Normalization(invert=True)")
            _require(name, options.get("axis", -1) in (-1, [-1], 3, [3]), f"axis {options.get('axis')!r}")
            if options.get("mean") is None or options.get("variance") is None:
                raise UnsupportedLayerError(f"layer {name}: a Normalization adapted to data (its mean and "
                                            f"variance are weights, not in the config) is not supported")
            mean, variance = _per_channel(name, options["mean"]), _per_channel(name, options["variance"])
            _require(name, (variance >= 0).all(), "a negative variance")
            # Keras divides by max(sqrt(variance), epsilon) with its backend epsilon 1e-7
            s = 1 / np.maximum(np.sqrt(variance), 1e-7)
            o = -mean * s
        scale, offset = scale * s, offset * s + o
    return from_scale_and_offset(scale, offset, "Keras " + " + ".join(names))


def _per_channel(name, value) -> np.ndarray:
    """A number or a list of 3 numbers as (3,) float64."""
    array = np.asarray(value, dtype=np.float64).reshape(-1)
    if array.size not in (1, 3) or not np.isfinite(array).all():
        raise ModelFileError(f"layer {name}: {value!r} is not one finite number or one per RGB channel")
    return np.broadcast_to(array, (3,))


def _batch_norm_settings(layer_config: dict) -> dict:
    """A BatchNormalization's epsilon and which of gamma (scale) and beta (center) it has."""
    options = layer_config.get("config", {})
    epsilon = options.get("epsilon", 1e-3)
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not 0 <= epsilon < 1:
        raise ModelFileError(f"layer {options.get('name')}: epsilon {epsilon!r} is not a small number")
    return {"epsilon": float(epsilon), "scale": bool(options.get("scale", True)),
            "center": bool(options.get("center", True))}


def _layer_configs(config: dict) -> list:
    """The list of per-layer configs; old Sequential configs are the list itself."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        raise ModelFileError("model config has no list of layers")
    return layers


def _input_shape(layer_configs: list, config: dict) -> tuple:
    """(H, W, C) from an InputLayer, the first layer's batch shape, or the model's build config."""
    for layer_config in [c for c in layer_configs if c.get("class_name") == "InputLayer"] + layer_configs[:1]:
        options = layer_config.get("config", {})
        for key in ("batch_shape", "batch_input_shape"):
            if options.get(key):
                return _image_shape(options[key])
    build_shape = (config.get("build_config") or {}).get("input_shape")
    if build_shape:
        return _image_shape(build_shape)
    raise ModelFileError("model config gives no input shape")


def _image_shape(batch_shape: list) -> tuple:
    """(H, W, C) from a Keras batch shape [batch, H, W, C]."""
    if not isinstance(batch_shape, (list, tuple)) or len(batch_shape) != 4:
        raise UnsupportedLayerError(f"input shape {batch_shape} is not a batch of images (N, H, W, C)")
    if not all(v is None or _positive_int(v) for v in batch_shape[1:]) or batch_shape[3] is None:
        raise ModelFileError(f"input shape {batch_shape}: sizes must be positive integers (or null for H, W)")
    return tuple(batch_shape[1:])


def _build_layer(layer_config: dict, shape: tuple):
    """One layer spec as [layers] (one, or a global max-pool's two) and the (H, W, C) or (features,) shape that
    comes out of it."""
    class_name = layer_config.get("class_name")
    options = layer_config.get("config", {})
    name = options.get("name") or layer_config.get("name")
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise UnsupportedLayerError(f"layer {name}: layer type {class_name} is not supported")
    layers, out_shape = builder(name, options, shape)
    return (layers if isinstance(layers, list) else [layers]), out_shape


def _conv(name: str, options: dict, shape: tuple):
    """A Conv2D spec; only the plain channels_last, undilated, ungrouped kind is supported."""
    _require_image(name, "Conv2D", shape)
    _require_channels_last(name, options)
    _require(name, _pair(options.get("dilation_rate", 1), name, "dilation_rate") == (1, 1), "dilation_rate != 1")
    _require(name, options.get("groups", 1) == 1, "groups != 1")
    _require(name, options.get("use_bias", True), "use_bias=False")
    kernel_size = _pair(_option(name, options, "kernel_size"), name, "kernel_size")
    filters = _count(name, options, "filters")
    strides, padding = _pair(options.get("strides", 1), name, "strides"), _padding(name, options)
    kernel, bias = placeholder(kernel_size + (shape[2], filters)), placeholder((filters,))
    out_shape = _spatial(name, shape, kernel_size, strides, padding) + (filters,)
    return Conv2D(name, kernel, bias, strides, padding, _activation(name, options)), out_shape


def _window_pool(layer_type, keras_class):
    """The spec builder of a windowed pool (MaxPooling2D, AveragePooling2D); strides default to the pool size as
    in Keras, and 'same' average windows average over their cells inside the image, as Keras does."""
    def build(name: str, options: dict, shape: tuple):
        _require_image(name, keras_class, shape)
        _require_channels_last(name, options)
        pool_size = _pair(options.get("pool_size", 2), name, "pool_size")
        strides = _pair(options.get("strides") or pool_size, name, "strides")
        padding = _padding(name, options)
        out_shape = _spatial(name, shape, pool_size, strides, padding) + (shape[2],)
        return layer_type(name, pool_size, strides, padding), out_shape
    return build


_pool, _average_pool = _window_pool(MaxPool2D, "MaxPooling2D"), _window_pool(AveragePool2D, "AveragePooling2D")


def _flatten(name: str, options: dict, shape: tuple):
    """A Flatten spec; it turns (H, W, C) into (H*W*C,)."""
    _require_image(name, "Flatten", shape)
    _require_channels_last(name, options)
    features = None if None in shape else math.prod(shape)
    return Flatten(name), (features,)


def _dense(name: str, options: dict, shape: tuple):
    """A Dense spec on a flat input."""
    # Keras applies Dense to the last axis of an image; the NumPy model only implements flat inputs.
    _require(name, len(shape) == 1, "Dense on an image-shaped input (no Flatten before it)")
    _require(name, options.get("use_bias", True), "use_bias=False")
    if shape[0] is None:
        raise ArchitectureError(f"layer {name}: input size unknown (the model input has no fixed size)")
    units = _count(name, options, "units")
    layer = Dense(name, placeholder((shape[0], units)), placeholder((units,)), _activation(name, options))
    return layer, (units,)


def _global_average(name: str, options: dict, shape: tuple):
    """A GlobalAveragePooling2D spec: (H, W, C) -> (C,)."""
    _require_image(name, "GlobalAveragePooling2D", shape)
    _require_channels_last(name, options)
    _require(name, not options.get("keepdims", False), "keepdims=True")
    return GlobalAveragePool2D(name), (shape[2],)


def _global_max(name: str, options: dict, shape: tuple):
    """A GlobalMaxPooling2D spec: a max-pool whose window is the image, then a flatten: (H, W, C) -> (C,)."""
    _require_image(name, "GlobalMaxPooling2D", shape)
    _require_channels_last(name, options)
    _require(name, not options.get("keepdims", False), "keepdims=True")
    if None in shape[:2]:
        raise ArchitectureError(f"layer {name}: GlobalMaxPooling2D needs a fixed input size (the model input has none)")
    window = tuple(shape[:2])
    return [MaxPool2D(f"{name}_window", window, window, "valid"), Flatten(name)], (shape[2],)


def _batch_norm(name: str, options: dict, shape: tuple):
    """A BatchNormalization spec over the last axis: an Affine layer (scale, shift) still to be read."""
    axis = options.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    _require(name, axis in (-1, len(shape)), f"axis {options.get('axis')!r} (only the channel axis)")
    channels = shape[-1]
    if channels is None:
        raise ArchitectureError(f"layer {name}: input size unknown")
    return Affine(name, placeholder((channels,)), placeholder((channels,))), shape


def _dropout(name: str, options: dict, shape: tuple):
    """A Dropout spec (identity at inference)."""
    return Dropout(name), shape


def _activation_layer(name: str, options: dict, shape: tuple):
    """A stand-alone Activation spec."""
    return Activation(name, _activation(name, options)), shape


_BUILDERS = {
    "Conv2D": _conv, "Convolution2D": _conv,
    "MaxPooling2D": _pool, "MaxPool2D": _pool,
    "AveragePooling2D": _average_pool, "AvgPool2D": _average_pool,
    "GlobalAveragePooling2D": _global_average, "GlobalAvgPool2D": _global_average,
    "GlobalMaxPooling2D": _global_max, "GlobalMaxPool2D": _global_max,
    "BatchNormalization": _batch_norm,
    "Flatten": _flatten, "Dense": _dense, "Dropout": _dropout, "Activation": _activation_layer,
}


def _pair(value, name="?", key="size") -> tuple:
    """(a, b) from a Keras size given as [a, b] or as one int for both axes; both positive integers."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(_positive_int(v) for v in pair):
        raise ModelFileError(f"layer {name}: {key} must be a positive integer or a pair of them, got {value!r}")
    return pair


def _positive_int(value) -> bool:
    """True for an int >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count(name, options, key) -> int:
    """A setting that must be a positive integer (filters, units)."""
    value = _option(name, options, key)
    if not _positive_int(value):
        raise ModelFileError(f"layer {name}: {key} must be a positive integer, got {value!r}")
    return value


def _option(name: str, options: dict, key: str):
    """A setting the layer cannot be built without."""
    if key not in options:
        raise ModelFileError(f"layer {name}: config lacks {key!r}")
    return options[key]


def _activation(name: str, options: dict) -> str:
    """The activation name, which must be one the NumPy model implements."""
    activation = options.get("activation") or "linear"
    _require(name, activation in ACTIVATIONS, f"activation {activation}")
    return activation


def _padding(name: str, options: dict) -> str:
    """'same' or 'valid'."""
    padding = str(options.get("padding", "valid")).lower()
    _require(name, padding in ("same", "valid"), f"padding {padding}")
    return padding


def _spatial(name: str, shape: tuple, window: tuple, strides: tuple, padding: str) -> tuple:
    """Output (H, W) of a window slid with `strides` under Keras's 'same' or 'valid' rule."""
    try:
        return tuple(None if size is None else output_size(size, k, s, padding)[0]
                     for size, k, s in zip(shape[:2], window, strides))
    except InputError:
        raise ArchitectureError(f"layer {name}: input {shape[:2]} is smaller than the window {window}") from None


def _require_image(name: str, class_name: str, shape: tuple) -> None:
    """Refuse an image layer placed after the input was flattened."""
    _require(name, len(shape) == 3, f"{class_name} after Flatten")


def _require_channels_last(name: str, options: dict) -> None:
    """Refuse channels_first layers: every array here is NHWC."""
    _require(name, options.get("data_format", "channels_last") == "channels_last", "data_format channels_first")


def _require(name: str, condition, option: str) -> None:
    """Raise UnsupportedLayerError naming the layer and the option unless `condition` holds."""
    if not condition:
        raise UnsupportedLayerError(f"layer {name}: {option} is not supported")
