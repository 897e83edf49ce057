"""Building a reference file: every intermediate a re-implementer needs, in the order it is computed.

    arrays = build_reference(model, x, methods=("fbi", "guided_backprop"))
    write_npz("ref.npz", arrays)                       # fbi_ref.io.arrays: byte-identical file on every run

Keys are stored in the order the computation produces them: the input, the weights, the forward pass layer
by layer, the FBI walk from the top down to the image, then the attributions. So the first key that fails a
comparison is where a re-implementation starts to differ. docs/reference-format.md documents every key.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.errors import InputError
from fbi_ref.io.weights_cache import md5sum, sha256sum
from fbi_ref.methods import multipass
from fbi_ref.methods.catalog import METHODS as RECORDS
from fbi_ref.methods.explain import METHODS, explain, resolve_target
from fbi_ref.nn.network import describe
from fbi_ref.nn.pooling import window_gaps
from fbi_ref.version import __version__

FORMAT = "fbi_ref reference"
# 1: x, w/, act/, logits, probs, target, fbi/, attr/, meta. 2 adds switch/<pool>, the walks of the other
# single-walk methods (<method>/backward/<position>), gradcam/weights and gradcam/map, smoothgrad/noise, and
# meta's near_ties, warnings, weights_digest; every version-1 key keeps its name and meaning.
FORMAT_VERSION = 2
# the methods whose walk is stored: the one-walk methods whose attribution is their walk's signal
WALKED = tuple(name for name, record in RECORDS.items() if record.one_walk and not record.times_input)
# By default a reference stores the weights when they take at most this (the Shapes model: 4.5 MB), so that compare
# can rebuild the model to replay near ties without opening any path; a larger model is found again by name, or its
# file is named by its sha256 in meta and compare asks for it (--model).
AUTO_WEIGHTS_BYTES = 64 * 2**20
NEAR_TIE = 1e-4  # a max-pool window is a near tie when its two largest values differ by at most this x max|input|

# What a re-implementation must match; the same rules as the docstrings of fbi_ref/nn/conv.py, pooling.py and dense.py.
CONVENTIONS = {
    "layout": "NHWC for images and feature maps; (N, units) after flatten",
    "preprocessing": "caffe: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68] (BGR), no scaling",
    "conv_kernel": "HWIO (kh, kw, C_in, C_out), cross-correlation as Keras computes it (not flipped)",
    "dense_kernel": "(in, out), computing x @ W + b",
    "padding": "'same' as Keras/TensorFlow: out = ceil(size / stride), total padding "
               "max((out - 1) * stride + k - size, 0), the smaller half before (top/left)",
    "pooling_tie_break": "max-pool switches go to the first maximum in row-major window order; "
                         "'same' padding cells never win",
    "switches": "switch/<pool>: int64, per output cell the flat index ih * W + iw of its winner in the pool's "
                "input plane (the same number in NHWC and NCHW)",
    "flatten_order": "(H, W, C): Keras's order, not PyTorch's (C, H, W)",
    "logits": "the pre-activation of the last layer; act/<last layer> is its softmax",
    "walks": "<method>/backward/<position>: the backward signal at a layer's output (or 'input'), after the "
             "rules of the layers above and the masks applied there; <method>/backward/<last layer> is the "
             "start signal w.r.t. the logits",
    "smoothgrad_noise": "smoothgrad/noise[n] = np.random.default_rng(seed).normal(0, sigma_n, size=(samples, H, W, C)) "
                        "in float64, cast to float32; sigma_n = noise * (max x[n] - min x[n])",
    "attribution": "w.r.t. the preprocessed input x (BGR channels), same shape as x",
}


# --- building --------------------------------------------------------------------------------

def build_reference(model, x, methods=METHODS, target=None, options=None, model_file=None,
                    with_weights=False, progress=False):
    """Every intermediate of the forward pass and of each method on a batch x, as {key: array}.

    model: an fbi_ref.Model; x: (N, H, W, C) preprocessed inputs; methods: names from METHODS;
    target: as for explain (None or 'top1', an index, a class name, one per image); options:
    {method: {option: value}}; model_file: the weights file, whose hashes go into meta;
    with_weights: also store every kernel and bias (w/<layer>/kernel, w/<layer>/bias).
    The keys are ordered as the computation goes (see the module docstring): a method's walk from the top
    down, then its attribution.
    """
    methods, options = _checked(methods, options or {})
    fp = model.forward(x)
    arrays = {"x": fp.x}
    if with_weights:
        arrays.update(_weights(model))
    for layer in model.layers:
        arrays[f"act/{layer.name}"] = fp.outputs[layer.name]
        if layer.name in fp.switches:
            arrays[f"switch/{layer.name}"] = fp.switches[layer.name]
    target_rule = "top1" if target is None else plain(target)
    target = resolve_target(model, target, fp.probs)
    arrays.update({"logits": fp.logits, "probs": fp.probs, "target": target})
    used, walks = {}, {}
    for method in tqdm(methods, desc="methods", disable=None if progress else True):  # None: only on a terminal
        e = explain(model, fp.x, method, target=list(target), record_layers=method in WALKED,
                    **options.get(method, {}))
        used[method] = e.options
        if method in WALKED:
            walks[method] = walk_arrays(method, e)
            arrays.update(walks[method])
        arrays.update(method_extras(model, fp, target, method, e.options))
        arrays[f"attr/{method}"] = e.attribution
    meta = {"near_ties": near_ties(model, fp), "warnings": empty_arrays(arrays, methods),
            "walks": {method: list(keys) for method, keys in walks.items()}}
    arrays["meta"] = np.array(meta_json(model, used, list(walks.get("fbi", ())), model_file, target_rule, meta))
    return arrays


def stores_weights(model, with_weights=None):
    """Whether a reference stores the weights: as asked (True, False), or (None) when they take at most
    AUTO_WEIGHTS_BYTES, so that compare can rebuild the model without opening any file."""
    if with_weights is not None:
        return bool(with_weights)
    return sum(getattr(layer, name).nbytes for layer in model.layers for name in layer.weights) <= AUTO_WEIGHTS_BYTES


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
    return {f"w/{layer.name}/{name}": getattr(layer, name) for layer in model.layers for name in layer.weights}


def walk_arrays(method, e):
    """A method's recorded walk from the top down: at each position its support (FBI's masks), then its signal."""
    out = {}
    for position, signal in e.backward.items():  # recorded top-down
        if e.support and position in e.support:
            out[f"{method}/support/{position}"] = e.support[position]
        out[f"{method}/backward/{position}"] = signal
    return out


def method_extras(model, fp, target, method, options):
    """What a method computes on the way to its attribution that a port can be checked against."""
    if method == "gradcam":
        weights, cam, _ = multipass.gradcam_parts(model, fp, target, options["layer"])
        return {"gradcam/weights": weights, "gradcam/map": cam}
    if method == "smoothgrad":
        noise = [multipass.smoothgrad_noise(image, options["samples"], options["noise"], options["seed"])
                 for image in fp.x]
        return {"smoothgrad/noise": np.stack(noise)}  # (N, samples, H, W, C)
    return {}


def near_ties(model, fp, relative=NEAR_TIE):
    """Per max-pool layer, its windows whose two largest values differ by at most relative * max|input|:
    where another implementation's rounding may pick another winner (fbi_ref.reference.replay accepts it)."""
    out = {}
    for i, layer in enumerate(model.layers):
        if layer.name in fp.switches and i > 0:
            a = fp.input_of(model, layer.name)
            gap, top = window_gaps(a, layer.pool_size, layer.strides, layer.padding)
            scale = float(np.abs(a).max()) or 1.0
            out[layer.name] = {"near": int(((gap <= relative * scale) & (top > 0)).sum()),
                               "exact": int(((gap == 0) & (top > 0)).sum()), "windows": int(gap.size)}
    return out


def empty_arrays(arrays, methods):
    """Warnings for attributions and walk positions that are all zero: a check of them checks nothing."""
    out = []
    for method in methods:
        if not np.any(arrays[f"attr/{method}"]):
            out.append(f"attr/{method} is all zero")
        walk = [k for k in arrays if k.startswith(f"{method}/backward/")]
        empty = [k for k in walk if not np.any(arrays[k])]
        if empty and f"attr/{method}" not in [w.split(" ")[0] for w in out]:
            out.append(f"{method}'s walk is all zero from {empty[0].split('/')[-1]} down ({len(empty)} of "
                       f"{len(walk)} positions)")
        elif empty:
            out[-1] += f" (its walk from {empty[0].split('/')[-1]} down)"
    return out


def weights_digest(model):
    """SHA-256 of every kernel and bias as float32 little-endian bytes, in layer order: the weights themselves,
    whatever file format holds them."""
    digest = hashlib.sha256()
    for layer in model.layers:
        for name in layer.weights:
            digest.update(np.ascontiguousarray(getattr(layer, name), dtype="<f4").tobytes())
    return digest.hexdigest()


def meta_json(model, options_used, walk_keys=(), model_file=None, target_rule="top1", extra=None):
    """The meta record as a stable JSON string: versions, model, options per method, conventions."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "fbi_ref_version": __version__, "numpy_version": np.__version__,
        "model": {"name": model.name, "input_shape": list(model.input_shape), "num_classes": model.num_classes,
                  "class_names": model.class_names and list(model.class_names),
                  "file": model_file and Path(model_file).name, "md5": model_file and md5sum(model_file),
                  "sha256": model_file and sha256sum(model_file), "weights_digest": weights_digest(model),
                  "preprocessing": model.preprocessing.spec()},
        "layers": [describe_layer(layer) for layer in model.layers],
        "dtype": np.dtype(model.dtype).name, "layout": "NHWC",
        "methods": {method: plain(opts) for method, opts in options_used.items()},
        "target": target_rule,
        "fbi_walk": list(walk_keys),
        "conventions": {**CONVENTIONS, "preprocessing": model.preprocessing.description},  # the model's own rule
        **(extra or {}),
    }
    return stable_json(meta)


# What the readers of a reference use from meta, and the JSON type each must have: anything else is refused in one
# line (a reference file may come from anybody).
META_FIELDS = {"model": dict, "layers": list, "methods": dict, "dtype": str, "near_ties": dict, "warnings": list,
               "walks": dict, "fbi_walk": list}


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_meta(text, source="the reference"):
    """A reference's meta record as a dict whose fields have the types meta_json writes; InputError otherwise."""
    try:
        meta = json.loads(str(text))
    except (ValueError, RecursionError) as error:
        raise InputError(f"{source}: its meta is not JSON ({str(error)[:80]})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{source}: its meta is a JSON {type(meta).__name__}, not an object")
    for name, kind in META_FIELDS.items():
        if name in meta and not isinstance(meta[name], kind):
            raise InputError(f"{source}: meta's {name!r} is a JSON {_JSON_TYPES.get(type(meta[name]), 'value')}, not "
                             f"a JSON {_JSON_TYPES[kind]}")
    if any(not isinstance(layer, dict) or not isinstance(layer.get("name"), str) or
           not isinstance(layer.get("type"), str) for layer in meta.get("layers", [])):
        raise InputError(f"{source}: meta's 'layers' are not records with a name and a type")
    if meta.get("dtype", "float32") not in ("float16", "float32", "float64"):
        raise InputError(f"{source}: meta's dtype {meta['dtype'][:40]!r} is not float16, float32 or float64")
    if any(not isinstance(options, dict) for options in meta.get("methods", {}).values()):
        raise InputError(f"{source}: meta's 'methods' are not records of options")
    if any(not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values())
           for counts in meta.get("near_ties", {}).values()):
        raise InputError(f"{source}: meta's 'near_ties' are not counts per max-pool")
    model = meta.get("model", {})
    if not isinstance(model.get("name", ""), (str, type(None))) or \
            not isinstance(model.get("input_shape", []), list) or \
            not all(isinstance(v, int) and 0 < v < 2**16 for v in model.get("input_shape", [])):
        raise InputError(f"{source}: meta's 'model' has no plain name and input shape")
    return meta


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
    return plain(describe(layer))


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
