"""Building a reference file: every intermediate a re-implementer needs, in the order it is computed.

    arrays = build_reference(model, x, methods=("fbi", "guided_backprop"))
    write_npz("ref.npz", arrays)                       # fbi_ref.io.arrays: byte-identical file on every run

Keys are stored in the order the computation produces them: the input, the weights, the forward pass layer
by layer, the FBI walk from the top down to the image, then the attributions. So the first key that fails a
comparison is where a re-implementation starts to differ. docs/reference-format.md documents every key.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.errors import InputError
from fbi_ref.io.weights_cache import md5sum
from fbi_ref.methods.explain import METHODS, explain, resolve_target
from fbi_ref.nn.network import Conv2D, Dense
from fbi_ref.version import __version__

FORMAT = "fbi_ref reference"
FORMAT_VERSION = 1

# What a re-implementation must match; the same rules as the docstring of fbi_ref/nn/layers.py.
CONVENTIONS = {
    "layout": "NHWC for images and feature maps; (N, units) after flatten",
    "preprocessing": "caffe: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68] (BGR), no scaling",
    "conv_kernel": "HWIO (kh, kw, C_in, C_out), cross-correlation as Keras computes it (not flipped)",
    "dense_kernel": "(in, out), computing x @ W + b",
    "padding": "'same' as Keras/TensorFlow: out = ceil(size / stride), total padding "
               "max((out - 1) * stride + k - size, 0), the smaller half before (top/left)",
    "pooling_tie_break": "max-pool switches go to the first maximum in row-major window order; "
                         "'same' padding cells never win",
    "flatten_order": "(H, W, C): Keras's order, not PyTorch's (C, H, W)",
    "logits": "the pre-activation of the last layer; act/<last layer> is its softmax",
    "attribution": "w.r.t. the preprocessed input x (BGR channels), same shape as x",
}


# --- building --------------------------------------------------------------------------------

def build_reference(model, x, methods=METHODS, target=None, options=None, model_file=None,
                    with_weights=False, progress=False):
    """Every intermediate of the forward pass and of each method on a batch x, as {key: array}.

    model: an fbi_ref.Model; x: (N, H, W, C) preprocessed inputs; methods: names from METHODS;
    target: as for explain (None or 'top1', an index, a class name, one per image); options:
    {method: {option: value}}; model_file: the weights file, whose MD5 goes into meta;
    with_weights: also store every kernel and bias (w/<layer>/kernel, w/<layer>/bias).
    The keys are ordered as the computation goes (see the module docstring).
    """
    methods, options = _checked(methods, options or {})
    fp = model.forward(x)
    arrays = {"x": fp.x}
    if with_weights:
        arrays.update(_weights(model))
    arrays.update({f"act/{layer.name}": fp.outputs[layer.name] for layer in model.layers})
    target_rule = "top1" if target is None else plain(target)
    target = resolve_target(model, target, fp.probs)
    arrays.update({"logits": fp.logits, "probs": fp.probs, "target": target})
    used, attributions, walk = {}, {}, {}
    for method in tqdm(methods, desc="methods", disable=None if progress else True):  # None: only on a terminal
        e = explain(model, fp.x, method, target=list(target), record_layers=(method == "fbi"),
                    **options.get(method, {}))
        attributions[f"attr/{method}"] = e.attribution
        used[method] = e.options
        if method == "fbi":
            walk = _fbi_walk(e)
    arrays.update(walk)
    arrays.update(attributions)
    arrays["meta"] = np.array(meta_json(model, used, list(walk), model_file, target_rule))
    return arrays


def _checked(methods, options):
    """The methods as a tuple of known names, and options only for those methods."""
    methods = tuple(methods)
    unknown = [m for m in (*methods, *options) if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not methods:
        raise InputError("no methods given")
    stray = [m for m in options if m not in methods]
    if stray:
        raise InputError(f"options given for {stray[0]!r}, which is not among the methods ({', '.join(methods)})")
    return methods, options


def _weights(model):
    """Every kernel and bias in Keras layout, by layer name."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, (Conv2D, Dense)):
            out[f"w/{layer.name}/kernel"] = layer.kernel
            out[f"w/{layer.name}/bias"] = layer.bias
    return out


def _fbi_walk(e):
    """FBI's recorded walk from the top down: at each position its support (where a mask applies), then its signal."""
    out = {}
    for position, signal in e.backward.items():  # recorded top-down
        if position in e.support:
            out[f"fbi/support/{position}"] = e.support[position]
        out[f"fbi/backward/{position}"] = signal
    return out


def meta_json(model, options_used, walk_keys=(), model_file=None, target_rule="top1"):
    """The meta record as a stable JSON string: versions, model, options per method, conventions."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "fbi_ref_version": __version__, "numpy_version": np.__version__,
        "model": {"name": model.name, "input_shape": list(model.input_shape), "num_classes": model.num_classes,
                  "class_names": model.class_names and list(model.class_names),
                  "file": model_file and Path(model_file).name, "md5": model_file and _md5(model_file)},
        "layers": [describe_layer(layer) for layer in model.layers],
        "dtype": np.dtype(model.dtype).name, "layout": "NHWC",
        "methods": {method: plain(opts) for method, opts in options_used.items()},
        "target": target_rule,
        "fbi_walk": list(walk_keys),
        "conventions": CONVENTIONS,
    }
    return stable_json(meta)


def stable_json(record):
    """A dict as JSON with sorted keys, one line per top-level entry and per item below it: stable and readable."""
    def entry(key, value):
        if isinstance(value, list) and value:
            items = ",\n".join(f"  {json.dumps(v, sort_keys=True)}" for v in value)
            return f" {json.dumps(key)}: [\n{items}\n ]"
        if isinstance(value, dict) and value:
            items = ",\n".join(f"  {json.dumps(k)}: {json.dumps(value[k], sort_keys=True)}" for k in sorted(value))
            return f" {json.dumps(key)}: {{\n{items}\n }}"
        return f" {json.dumps(key)}: {json.dumps(value, sort_keys=True)}"
    return "{\n" + ",\n".join(entry(k, record[k]) for k in sorted(record)) + "\n}"


def describe_layer(layer):
    """A layer's type and hyper-parameters (no weights) as plain JSON values."""
    out = {"name": layer.name, "type": type(layer).__name__}
    for attr in ("activation", "padding", "strides", "pool_size"):
        if hasattr(layer, attr):
            out[attr] = plain(getattr(layer, attr))
    if hasattr(layer, "kernel"):
        out["kernel_shape"] = list(layer.kernel.shape)
    return out


def plain(value):
    """A value as strict JSON: tuples as lists, numpy scalars as numbers, inf/nan and arrays as text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return f"array of shape {list(value.shape)}"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # 'inf', '-inf', 'nan': JSON has no such numbers
    return value


def _md5(path):
    """The MD5 of the model file (so a re-implementer can check they loaded the same weights)."""
    return md5sum(path)
