"""The model a reference file was made with, rebuilt from the file itself (its layers and w/... weights), or
found by name, for replaying near ties (replay.py). The weights' digest in meta must match."""
from __future__ import annotations


import numpy as np

from fbi_ref.errors import FbiRefError, UnsupportedLayerError
from fbi_ref.io.weights_cache import KNOWN_WEIGHTS
from fbi_ref.io.zoo import embedded_models, load_model
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import LAYER_TYPES, Architecture, rebuild
from fbi_ref.reference.build import read_meta, weights_digest


def reference_model(ref, model=None):
    """(the reference's model, '') or (None, why not): from `model` if given, the file's weights, or by name."""
    meta = read_meta(ref["meta"], getattr(ref, "name", "the reference"))
    digest = meta.get("model", {}).get("weights_digest")
    candidates = []
    if model is not None:
        candidates.append(("the model given", lambda: model))
    if any(k.startswith("w/") for k in ref):
        candidates.append(("the file's weights", lambda: from_file(ref, meta)))
    name = meta.get("model", {}).get("name")
    if isinstance(name, str) and name in known_names():  # a name only: a file never makes us open a path it names
        candidates.append((f"model {name!r}", lambda: load_model(name)))
    for what, build in candidates:
        try:
            found = build()
        except (FbiRefError, KeyError, ValueError, TypeError) as error:  # TypeError: a layer record of junk
            reason = f"{what}: {error}"
            continue
        if digest is None or weights_digest(found) == digest:
            return found, ""
        reason = f"{what} has other weights than the reference (weights_digest differs)"
    if not candidates:
        return None, _give_the_model(meta)
    if model is None and not any(k.startswith("w/") for k in ref) and digest is not None:
        return None, f"{reason}; {_give_the_model(meta)}"
    return None, reason


def _give_the_model(meta):
    """The one-line instruction when the reference holds no weights and names no model fbi_ref knows."""
    record = meta.get("model", {})
    file, sha = record.get("file"), record.get("sha256")
    if isinstance(file, str) and isinstance(sha, str):
        return (f"the reference was made with the model file {file!r} (sha256 {sha}) and does not hold "
                f"its weights: give that file with --model (compare never opens a path written in a reference)")
    return ("the reference holds no weights (write it with --with-weights) and names no model fbi_ref knows; give "
            "the model with --model")


def known_names():
    """The model names load_model knows without a path: the cached weights' and the embedded models'."""
    return {*KNOWN_WEIGHTS, *embedded_models()}


def from_file(ref, meta):
    """A Model from meta['layers'] and the w/<layer>/kernel, w/<layer>/bias arrays of a reference file."""
    layers = []
    for spec in meta["layers"]:
        layer_type = LAYER_TYPES.get(spec["type"])
        if layer_type is None:
            raise UnsupportedLayerError(f"layer {spec['name']!r}: type {spec['type']} is not one of {', '.join(LAYER_TYPES)}")
        layers.append(rebuild(spec, {name: _weight(ref, spec["name"], name) for name in layer_type.weights}))
    arch = Architecture(layers, tuple(meta["model"]["input_shape"]), meta["model"]["name"])
    model = Model(arch, meta["model"].get("class_names"), meta["model"].get("preprocessing", "caffe"))
    return model.astype(np.dtype(meta.get("dtype", "float32")))


def _weight(ref, name, which):
    """One stored weight as a float32 array."""
    return np.asarray(ref[f"w/{name}/{which}"], dtype=np.float32)
