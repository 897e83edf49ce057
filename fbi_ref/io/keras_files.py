"""Read the weights layouts Keras writes (.h5 of Keras 1/2/3, .weights.h5, .keras) and write the official one.

Layouts (see the README of the keras-small fixtures):
- "layer_names": root (or /model_weights in a full-model .h5) @layer_names, one group per layer
  with @weight_names naming its datasets in kernel, bias order; Keras 1 official files, Keras 2
  save_weights('x.h5') and every model.save('x.h5').
- "layers": /layers/<class-derived name>/vars/0, 1, ... from Keras 3 (and late tf-keras)
  save_weights('x.weights.h5'), also inside a .keras zip next to config.json.

A file cannot make fbi_ref read anything but itself, nor allocate more than it must: external links, datasets
stored in other files (external storage, virtual datasets) and filters HDF5 would load from plugins are
refused before any weight is read, and every declared size is checked against the architecture and against
MAX_MODEL_BYTES first.
"""
from __future__ import annotations

import dataclasses
import json
import lzma
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

from fbi_ref.errors import ArchitectureError, InputError, ModelFileError, UnsupportedLayerError
from fbi_ref.io.infer import check_shape, infer_vgg, kernel_and_bias
from fbi_ref.io.keras_config import architecture_from_config
from fbi_ref.io.paths import errors_named, input_file
from fbi_ref.nn.architectures import vgg16, vgg19, weighted_layers
from fbi_ref.nn.weights import is_placeholder
from fbi_ref.nn.network import Affine, Architecture, Conv2D, Dense

_ZIP_MAGIC = b"PK\x03\x04"
_NAMED_ARCHITECTURES = {"vgg16": vgg16, "vgg19": vgg19}
# Keras 3 names a layer's group after its class, numbered per class in model.layers order.
_WEIGHTED_GROUPS = {"conv2d": Conv2D, "dense": Dense, "batch_normalization": Affine}
# HDF5 keeps attributes in a 64 kB object header; Keras splits longer lists into name0, name1, ...
_ATTRIBUTE_LIMIT = 64512
_INPUT_LAYER = "input_1"

# The most weight data a model may declare (bytes as float32): VGG19 has 574 MB.
MAX_MODEL_BYTES = int(os.environ.get("FBI_REF_MAX_MODEL_BYTES", 2 * 2**30))
# A .keras file's weights may be this much larger than its config's weights in float64, for HDF5's own records.
_HDF5_OVERHEAD = 16 * 2**20
_MAX_CONFIG_BYTES = 16 * 2**20
_MAX_OBJECTS = 100_000
# The filters HDF5 has built in (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and LZF, which h5py
# brings; any other would make HDF5 search its plugin path and load a shared library.
_BUILT_IN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


@dataclasses.dataclass
class _Stored:
    """One layer as a file holds it: its Keras name (None if only class-derived), group key, datasets."""
    name: str | None
    key: str
    datasets: tuple


def read_keras_file(path, architecture=None) -> Architecture:
    """The model in a Keras file; `architecture` is 'vgg16', 'vgg19', an Architecture, the path of a model config
    (.json, as `model.to_json()` writes it; for .weights.h5 files), or None to infer."""
    path = input_file(path, "Keras weights file", ModelFileError)
    with errors_named(path, "Keras HDF5 or .keras file", KERAS_ERRORS):
        with open(path, "rb") as file:
            is_zip = file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        return _read_keras_zip(path, architecture) if is_zip else _read_hdf5(path, architecture)


# h5py reports damaged files as OSError, RuntimeError or ValueError (bad JSON and text also land here); a config
# of the wrong shape (a list where a dict belongs, text where a number does) as the others.
KERAS_ERRORS = (OSError, RuntimeError, ValueError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError,
                TypeError, AttributeError, KeyError, IndexError, RecursionError, ZeroDivisionError, OverflowError)


def _read_keras_zip(path: Path, architecture) -> Architecture:
    """A Keras 3 .keras zip: config.json gives the layers, model.weights.h5 the weights."""
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as scratch:
        missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
        if missing:
            raise ModelFileError(f".keras archive lacks {', '.join(sorted(missing))}")
        config_size = archive.getinfo("config.json").file_size
        if config_size > _MAX_CONFIG_BYTES:
            raise ModelFileError(f"config.json declares {config_size:,} bytes, more than {_MAX_CONFIG_BYTES:,}")
        config = _config_object(archive.read("config.json"))
        weights = archive.getinfo("model.weights.h5")
        limit = _weights_file_limit(_chosen(architecture, config))
        if weights.file_size > limit:
            raise ModelFileError(f"model.weights.h5 declares {weights.file_size:,} bytes, more than the "
                                 f"{limit:,} its architecture can need")
        # h5py needs a seekable file; a member of a compressed zip only seeks by re-reading from the start.
        # The copy stops at the size the archive declares (zipfile checks it), which was checked above.
        weights_path = Path(scratch) / "model.weights.h5"
        with archive.open(weights) as source, open(weights_path, "wb") as target:
            shutil.copyfileobj(source, target)
        return _read_hdf5(weights_path, architecture, config)


def _config_file(path) -> dict:
    """A Keras model config from a .json file (`model.to_json()`), read up to _MAX_CONFIG_BYTES."""
    path = input_file(path, "Keras model config (.json)", ModelFileError)
    with errors_named(path, "Keras model config (.json)", KERAS_ERRORS), open(path, "rb") as file:
        text = file.read(_MAX_CONFIG_BYTES + 1)
        if len(text) > _MAX_CONFIG_BYTES:
            raise ModelFileError(f"{path.name} is larger than {_MAX_CONFIG_BYTES:,} bytes: not a model config")
        return _config_object(text)


def _config_object(text) -> dict:
    """A Keras model config from its JSON text: it must be a JSON object."""
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ModelFileError(f"the model config is a JSON {type(config).__name__}, not an object")
    return config


def _weights_file_limit(architecture) -> int:
    """The largest weights file an architecture can need (its weights in float64 plus HDF5's records)."""
    if not isinstance(architecture, Architecture):
        return MAX_MODEL_BYTES * 2 + _HDF5_OVERHEAD
    return _declared_bytes(architecture) * 2 + _HDF5_OVERHEAD


def _declared_bytes(architecture: Architecture) -> int:
    """The architecture's weights in float32 bytes; ModelFileError beyond MAX_MODEL_BYTES."""
    total = sum(4 * (math.prod(layer.kernel.shape) + math.prod(layer.bias.shape))
                for layer in weighted_layers(architecture))
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(f"the architecture declares {total:,} bytes of weights, more than the "
                             f"{MAX_MODEL_BYTES:,} allowed (FBI_REF_MAX_MODEL_BYTES)")
    return total


def _check_contents(h5: h5py.File) -> None:
    """Refuse what would read outside the file (external links, external or virtual storage) or load a plugin."""
    links = []

    def visit(name, link):  # collect only: an exception raised inside h5py's visit would be mangled
        links.append((name, link))
        return True if len(links) > _MAX_OBJECTS else None  # anything but None stops the visit
    h5.visititems_links(visit)
    if len(links) > _MAX_OBJECTS:
        raise ModelFileError(f"more than {_MAX_OBJECTS:,} objects: not a Keras weights file")
    for name, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise ModelFileError(f"/{name} is an external link to {link.filename}; fbi_ref reads only the file itself")
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            raise ModelFileError(f"/{name} is a {type(link).__name__}, which fbi_ref does not follow")
    for name, link in links:
        target = h5.get(name) if isinstance(link, h5py.HardLink) else None
        if isinstance(target, h5py.Dataset):
            _check_storage(target)


def _check_storage(dataset: h5py.Dataset) -> None:
    """A dataset must keep its data in this file and use only built-in filters."""
    if dataset.external:
        raise ModelFileError(f"{dataset.name} keeps its data in another file ({dataset.external[0][0]}); "
                             f"fbi_ref reads only the file itself")
    if dataset.is_virtual:
        raise ModelFileError(f"{dataset.name} is a virtual dataset (made of other files); refused")
    plist = dataset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _BUILT_IN_FILTERS:
            raise ModelFileError(f"{dataset.name} needs HDF5 filter {code}, which is not built in; refused")


def _read_hdf5(path: Path, architecture, config: dict | None = None) -> Architecture:
    """Any HDF5 layout: pick the weights group and the architecture, then read the weights."""
    with h5py.File(path, "r") as h5:
        _check_contents(h5)
        if "model_config" in h5.attrs:
            config = _config_object(_text(h5.attrs["model_config"]))
            h5 = _subgroup(h5, "model_weights")
        if _attribute_list(h5.attrs, "layer_names") is not None:
            return _from_layer_names(h5, _chosen(architecture, config))
        if isinstance(h5.get("layers"), h5py.Group):
            return _from_class_groups(h5, _chosen(architecture, config))
        raise ModelFileError("unknown weights layout (no @layer_names, @model_config or /layers group)")


def _chosen(architecture, config: dict | None):
    """An Architecture, a builder taking include_top (for a name), or None to infer from the weights."""
    # An explicit architecture wins over the file's own config.
    if isinstance(architecture, Architecture):
        return architecture
    if isinstance(architecture, (str, os.PathLike)) and os.fspath(architecture).lower().endswith(".json"):
        return architecture_from_config(_config_file(architecture))
    if isinstance(architecture, str):
        if architecture.lower() not in _NAMED_ARCHITECTURES:
            raise InputError(f"unknown architecture {architecture!r} (known: vgg16, vgg19)")
        return _NAMED_ARCHITECTURES[architecture.lower()]
    if architecture is not None:
        raise InputError(f"architecture must be a name, an Architecture or None, not {architecture!r}")
    return architecture_from_config(config) if config is not None else None


def _from_layer_names(group: h5py.Group, architecture) -> Architecture:
    """Weights from the @layer_names layout, matched to the architecture by layer name."""
    names = _attribute_list(group.attrs, "layer_names")
    stored = [_Stored(name, name, _layer_datasets(group, name)) for name in names]
    if architecture is None:
        _check_sizes([d for s in stored for d in s.datasets])
        return infer_vgg([(s.name, _read_all(s.datasets)) for s in stored])
    if callable(architecture):
        architecture = architecture(include_top=_has_dense(stored))
    return _filled(architecture, _opened(stored, {layer.name for layer in architecture.layers}))


def _opened(stored: list, layer_names: set) -> dict:
    """Layer name -> datasets, a nested model's group (one the architecture has no layer of) opened: each of its
    datasets belongs to the layer whose group holds it (.../vgg16/block1_conv1/kernel: block1_conv1)."""
    out = {}
    for s in stored:
        if s.name in layer_names or not s.datasets:
            out[s.name] = s.datasets
            continue
        for dataset in s.datasets:
            parts = dataset.name.split("/")
            owner = parts[-2] if len(parts) >= 3 else s.name
            out[owner] = out.get(owner, ()) + (dataset,)
    return out


def _layer_datasets(group: h5py.Group, name: str) -> tuple:
    """A layer's datasets in @weight_names order (sorted keys would put the bias first)."""
    layer = _subgroup(group, name)
    return tuple(_dataset(layer, weight) for weight in _attribute_list(layer.attrs, "weight_names") or [])


def _from_class_groups(h5: h5py.Group, architecture) -> Architecture:
    """Weights from the /layers/<class-derived name>/vars layout, matched by @name or class order."""
    stored = _class_groups(h5["layers"])
    weighted = _weighted_in_order(stored)
    named = all(s.name for s in weighted)  # only recent Keras 3 writes @name
    if architecture is None:
        num_pools = sum(_class_key(s.key)[0] == "max_pooling2d" for s in stored)
        _check_sizes([d for s in weighted for d in s.datasets])
        return infer_vgg([(s.name if named else None, _read_all(s.datasets)) for s in weighted], num_pools)
    if callable(architecture):
        architecture = architecture(include_top=_has_dense(weighted))
    names = {s.name for s in weighted}
    if named and all(layer.name in names for layer in weighted_layers(architecture)):
        return _filled(architecture, {s.name: s.datasets for s in weighted})
    # Keras itself ignores @name and pairs layers with groups by class and position.
    return _filled(architecture, _by_class_order(architecture, weighted))


def _class_groups(layers: h5py.Group, depth=0) -> list:
    """Every /layers entry, a nested model's (.../layers/functional/layers/...) in its place."""
    if depth > 8:
        raise ModelFileError("layer groups nested more than 8 deep")
    out = []
    for key, group in layers.items():
        inner = group.get("layers") if isinstance(group, h5py.Group) else None
        if isinstance(inner, h5py.Group):
            nested = _class_groups(inner, depth + 1)
            if any(s.datasets and not s.name for s in nested):
                raise ModelFileError(f"/layers/{key} is a nested model whose layers are not named (@name): "
                                     f"written by an older Keras 3; save it again with a recent one")
            out += nested
        else:
            out.append(_class_group(key, group))
    return out


def _class_group(key: str, group: h5py.Group) -> _Stored:
    """One /layers entry: its @name (written by recent Keras 3 only) and vars 0, 1, ... in numeric order."""
    if not isinstance(group, h5py.Group):
        raise ModelFileError(f"layer entry /layers/{key} is damaged or not a group")
    variables = group.get("vars")
    if not isinstance(variables, h5py.Group):
        return _Stored(None, key, ())
    name = _text(variables.attrs["name"]) if "name" in variables.attrs else None
    indices = sorted(int(index) for index in variables if index.isdigit())
    return _Stored(name, key, tuple(_dataset(variables, str(index)) for index in indices))


def _weighted_in_order(stored: list) -> list:
    """The class groups that hold weights, in model order: per class by number, conv before dense."""
    weighted = [s for s in stored if s.datasets]
    for s in weighted:
        if _class_key(s.key)[0] not in _WEIGHTED_GROUPS:
            raise UnsupportedLayerError(f"layer group {s.key}: layers with weights of this kind are not supported")
    kinds = list(_WEIGHTED_GROUPS)
    return sorted(weighted, key=lambda s: (kinds.index(_class_key(s.key)[0]), _class_key(s.key)[1]))


def _class_key(key: str) -> tuple:
    """('conv2d', 10) for 'conv2d_10' and ('conv2d', 0) for 'conv2d': never compare these as strings."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
    return match.group(1), int(match.group(2) or 0)


def _by_class_order(architecture: Architecture, weighted: list) -> dict:
    """Layer name -> datasets, pairing the k-th Conv2D (Dense) layer with the k-th conv2d (dense) group."""
    by_name = {}
    for kind, layer_type in _WEIGHTED_GROUPS.items():
        names = [layer.name for layer in architecture.layers if isinstance(layer, layer_type)]
        groups = [s for s in weighted if _class_key(s.key)[0] == kind]
        if len(names) != len(groups):
            raise ArchitectureError(f"architecture has {len(names)} {layer_type.__name__} layers, "
                                    f"file has {len(groups)} {kind} groups")
        by_name.update({name: s.datasets for name, s in zip(names, groups)})
    return by_name


def _filled(architecture: Architecture, stored: dict) -> Architecture:
    """A copy of `architecture` whose weights are read from `stored` (layer name -> datasets), its batch norms
    turned into scale and shift and folded into the conv or dense layer right before them where they can be."""
    _declared_bytes(architecture)
    wanted = weighted_layers(architecture)
    missing = [layer.name for layer in wanted if not stored.get(layer.name)]
    if missing:
        raise ArchitectureError(f"no weights for layers {', '.join(missing)}")
    unused = sorted({name for name, datasets in stored.items() if datasets} - {layer.name for layer in wanted})
    if unused:
        raise ArchitectureError(f"weights for layers the architecture does not have: {', '.join(unused)}")
    batch_norms = architecture.extra.get("batch_norms", {})
    for layer in wanted:  # check every shape before reading any weights
        if layer.name in batch_norms:
            _batch_norm_datasets(layer, stored[layer.name], batch_norms[layer.name])
            continue
        kernel, bias = kernel_and_bias(layer.name, stored[layer.name])
        check_shape(layer.name, "kernel", layer.kernel.shape, kernel.shape)
        check_shape(layer.name, "bias", layer.bias.shape, bias.shape)
    loaded = {layer.name: _batch_norm(layer, stored[layer.name], batch_norms[layer.name]) if layer.name in batch_norms
              else _loaded(layer, stored[layer.name]) for layer in wanted}
    layers = [loaded.get(layer.name, layer) for layer in architecture.layers]
    return _folded(dataclasses.replace(architecture, layers=layers))


def _loaded(layer, datasets: tuple):
    """The layer with its kernel and bias read from the file."""
    kernel, bias = _read_all(datasets)
    return dataclasses.replace(layer, kernel=kernel, bias=bias)


def _batch_norm_datasets(layer, datasets: tuple, settings: dict) -> None:
    """ArchitectureError unless a batch norm's datasets are gamma (if scale), beta (if center), moving mean and
    variance, one value per channel each."""
    names = ["gamma"] * settings["scale"] + ["beta"] * settings["center"] + ["moving_mean", "moving_variance"]
    if len(datasets) != len(names):
        raise ArchitectureError(f"layer {layer.name}: expected {len(names)} weight arrays ({', '.join(names)}), "
                                f"found {len(datasets)}")
    for name, dataset in zip(names, datasets):
        check_shape(layer.name, name, layer.kernel.shape, dataset.shape)


def _batch_norm(layer, datasets: tuple, settings: dict):
    """The Affine layer of an inference-mode batch norm: scale = gamma / sqrt(var + eps), shift = beta - mean *
    scale (as Keras computes it), in float64 and stored as float32."""
    arrays = [a.astype(np.float64) for a in _read_all(datasets)]
    ones = np.ones(layer.kernel.shape)
    gamma = arrays.pop(0) if settings["scale"] else ones
    beta = arrays.pop(0) if settings["center"] else 0 * ones
    mean, variance = arrays
    if (variance < 0).any():
        raise ArchitectureError(f"layer {layer.name}: its moving variance holds negative values")
    scale = gamma / np.sqrt(variance + settings["epsilon"])  # (C,)
    return dataclasses.replace(layer, kernel=(scale).astype(np.float32), bias=(beta - mean * scale).astype(np.float32))


def _folded(architecture: Architecture) -> Architecture:
    """Each batch norm (Affine) right after a conv or dense layer without activation folded into that layer
    (kernel * scale, bias * scale + shift): the folded layer keeps the conv's name, extra['folded'] maps it to the
    batch norm's, whose output it computes."""
    layers, folded = [], {}
    batch_norms = architecture.extra.get("batch_norms", {})
    for layer in architecture.layers:
        before = layers[-1] if layers else None
        if isinstance(layer, Affine) and layer.name in batch_norms and isinstance(before, (Conv2D, Dense)) \
                and before.activation == "linear":
            scale, shift = layer.kernel.astype(np.float64), layer.bias.astype(np.float64)
            kernel = (before.kernel.astype(np.float64) * scale).astype(np.float32)  # scales each output channel
            bias = (before.bias.astype(np.float64) * scale + shift).astype(np.float32)
            layers[-1] = dataclasses.replace(before, kernel=kernel, bias=bias)
            folded[before.name] = layer.name
        else:
            layers.append(layer)
    return dataclasses.replace(architecture, layers=layers, extra={**architecture.extra, "folded": folded})


def _has_dense(stored: list) -> bool:
    """True if some layer has a 2-D (dense) kernel, i.e. the file includes the classifier top."""
    return any(s.datasets and len(s.datasets[0].shape) == 2 for s in stored)


def _check_sizes(datasets) -> None:
    """Before reading weights with no architecture to check them against: sane ranks, total at most MAX_MODEL_BYTES."""
    total = 0
    for dataset in datasets:
        if dataset.ndim not in (1, 2, 4) or 0 in dataset.shape:
            raise ModelFileError(f"weight {dataset.name} has shape {dataset.shape}: not a kernel or a bias")
        total += 4 * math.prod(dataset.shape)
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(f"the weights declare {total:,} bytes, more than the {MAX_MODEL_BYTES:,} allowed "
                             f"(FBI_REF_MAX_MODEL_BYTES)")


def _read_all(datasets: tuple) -> tuple:
    """Read datasets as float32 C-contiguous arrays, converting inside HDF5 (no float64 copy)."""
    arrays = []
    for dataset in datasets:
        if dataset.dtype.kind != "f":
            raise ModelFileError(f"weight {dataset.name} has dtype {dataset.dtype}, not floating point")
        array = np.empty(dataset.shape, np.float32)
        if array.size:
            dataset.read_direct(array)
        arrays.append(array)
    return tuple(arrays)


def _subgroup(group: h5py.Group, name: str) -> h5py.Group:
    """group[name], which must be a group."""
    found = group.get(name)
    if not isinstance(found, h5py.Group):
        raise ModelFileError(f"layer group {name!r} is listed but missing")
    return found


def _dataset(group: h5py.Group, name: str) -> h5py.Dataset:
    """group[name], which must be a dataset."""
    found = group.get(name)
    if not isinstance(found, h5py.Dataset):
        raise ModelFileError(f"weight {name!r} of {group.name} is listed but missing")
    return found


def _attribute_list(attrs, name: str) -> list | None:
    """A list of strings stored whole as attrs[name] or split as name0, name1, ...; None if absent."""
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in attrs:
            chunks.append(attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    # Weightless layers store an empty float64 array: atleast_1d turns it into no names.
    return [_text(value) for chunk in chunks for value in np.atleast_1d(chunk)]


def _text(value) -> str:
    """An attribute value as str, whether h5py returned bytes or str."""
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def write_keras_weights(arch: Architecture, path) -> None:
    """Save weights in the layout of vgg16_weights_tf_dim_ordering_tf_kernels.h5, for model.load_weights."""
    layer_names = [_INPUT_LAYER] + [layer.name for layer in arch.layers]
    if len(set(layer_names)) != len(layer_names):
        raise InputError(f"layer names must be unique (and not {_INPUT_LAYER!r}) to be saved")
    with h5py.File(path, "w") as h5:
        _write_attribute_list(h5.attrs, "layer_names", layer_names)
        _write_layer(h5, _INPUT_LAYER, ())
        for layer in arch.layers:
            weights = tuple(getattr(layer, name) for name in layer.weights)
            _write_layer(h5, layer.name, weights)


def _write_layer(h5: h5py.File, name: str, weights: tuple) -> None:
    """One layer group with @weight_names ['<name>_W_1:0', '<name>_b_1:0'] (none if weightless)."""
    if any(is_placeholder(np.asarray(w)) for w in weights):
        raise InputError(f"layer {name}: has no weights yet (load or fill them before saving)")
    group = h5.create_group(name)
    weight_names = [f"{name}_{kind}_1:0" for kind in "Wb"][: len(weights)]
    _write_attribute_list(group.attrs, "weight_names", weight_names)
    for weight_name, weight in zip(weight_names, weights):
        group.create_dataset(weight_name, data=np.asarray(weight, dtype=np.float32))


def _write_attribute_list(attrs, name: str, values: list) -> None:
    """Store strings as fixed-length bytes like Keras does, split into name0, name1, ... when too long."""
    # Keras writes an empty list as np.asarray([]), i.e. an empty float64 array.
    data = np.array([value.encode("utf8") for value in values]) if values else np.array([], np.float64)
    chunks = 1
    while any(chunk.nbytes > _ATTRIBUTE_LIMIT for chunk in np.array_split(data, chunks)):
        chunks += 1
    if chunks == 1:
        attrs[name] = data
        return
    for index, chunk in enumerate(np.array_split(data, chunks)):
        attrs[f"{name}{index}"] = chunk
