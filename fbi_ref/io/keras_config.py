"""Turn a Keras model config (the JSON in a full-model .h5 or a .keras file) into an Architecture."""
from __future__ import annotations

import math

from fbi_ref.errors import ArchitectureError, InputError, ModelFileError, UnsupportedLayerError
from fbi_ref.nn.activations import ACTIVATIONS
from fbi_ref.nn.geometry import output_size
from fbi_ref.nn.network import Activation, Architecture, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from fbi_ref.nn.weights import placeholder


def architecture_from_config(config: dict) -> Architecture:
    """The layers of a sequential or functional Keras model config, with placeholder weights."""
    layer_configs = _layer_configs(config)
    input_shape = shape = _input_shape(layer_configs, config)
    layers = []
    for layer_config in layer_configs:
        if layer_config.get("class_name") == "InputLayer":
            continue
        layer, shape = _build_layer(layer_config, shape)
        layers.append(layer)
    inner = config.get("config")
    name = inner.get("name", "model") if isinstance(inner, dict) else "model"
    return Architecture(layers, input_shape, name=name)


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
    """One layer spec and the (H, W, C) or (features,) shape that comes out of it."""
    class_name = layer_config.get("class_name")
    options = layer_config.get("config", {})
    name = options.get("name") or layer_config.get("name")
    builder = _BUILDERS.get(class_name)
    if builder is None:
        raise UnsupportedLayerError(f"layer {name}: layer type {class_name} is not supported")
    return builder(name, options, shape)


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


def _pool(name: str, options: dict, shape: tuple):
    """A MaxPool2D spec; strides default to the pool size as in Keras."""
    _require_image(name, "MaxPooling2D", shape)
    _require_channels_last(name, options)
    pool_size = _pair(options.get("pool_size", 2), name, "pool_size")
    strides = _pair(options.get("strides") or pool_size, name, "strides")
    padding = _padding(name, options)
    out_shape = _spatial(name, shape, pool_size, strides, padding) + (shape[2],)
    return MaxPool2D(name, pool_size, strides, padding), out_shape


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


def _dropout(name: str, options: dict, shape: tuple):
    """A Dropout spec (identity at inference)."""
    return Dropout(name), shape


def _activation_layer(name: str, options: dict, shape: tuple):
    """A stand-alone Activation spec."""
    return Activation(name, _activation(name, options)), shape


_BUILDERS = {
    "Conv2D": _conv, "Convolution2D": _conv,
    "MaxPooling2D": _pool, "MaxPool2D": _pool,
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
