"""Models by name (the official Keras and torchvision VGG weights, the embedded Shapes model) or by path:
`load_model`. Each model gets the preprocessing of the weights it was trained with (caffe for Keras's,
torchvision's for torchvision's), and 1000-class models the ImageNet class names."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from fbi_ref.errors import InputError, ModelFileError
from fbi_ref.io import weights_cache
from fbi_ref.io.imagenet import CLASSES
from fbi_ref.io.keras_files import read_keras_file
from fbi_ref.io.onnx_files import is_onnx_file, read_onnx_file
from fbi_ref.io.paths import shown
from fbi_ref.io.torch_files import is_torch_file, read_torchvision_file
from fbi_ref.nn.model import Model
from fbi_ref.nn.preprocessing import preprocessing as preprocessing_rule
from fbi_ref.nn.weights import read_only

# The models that ship inside the package (the embedded, trained Shapes model): package data, in the wheel too.
# (An installed package is a folder of files; a zipped one, which pip never makes, would have none to give h5py.)
EMBEDDED_DIR = Path(str(resources.files("fbi_ref.io") / "embedded"))

# What a model read from a file overrides of FBI's defaults (fbi_ref/methods/fbi.py, the paper's readings).
# Caffe-preprocessed input (Keras's VGG16/VGG19): nothing, the paper's k = 50 %, tau = 10 are FBI's defaults.
# For inputs not on the caffe scale (torchvision's are ~58 times smaller) the paper's absolute tau = 10 empties
# every map. A relative tau does not depend on the scale; its value is ours and is not tuned on ImageNet.
SCALE_FREE_FBI_DEFAULTS = {"tau": 0.05, "tau_mode": "relative"}
# The preprocessing of a file that does not say (Keras's files never do): the caffe rule of Keras's VGG.
DEFAULT_PREPROCESSING = "caffe"


def embedded_models():
    """{name: path} of the models that ship in the package (fbi_ref/io/embedded/: each NAME.h5 with a NAME.json
    manifest)."""
    if not EMBEDDED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(EMBEDDED_DIR.glob("*.h5")) if p.with_suffix(".json").is_file()}


def load_model(path_or_name, architecture=None, preprocessing=None) -> Model:
    """Load a model from a Keras, torchvision or ONNX file, or by name.

    path_or_name: 'vgg16', 'vgg19' (with '_notop' variants): the official Keras weights from the cache
        (`fbi-ref weights fetch vgg16` downloads them; a copy in Keras's own cache is used too);
        'torchvision_vgg16', 'torchvision_vgg19': torchvision's ImageNet weights (needs torch to read the .pth;
        a copy in torch.hub's cache is used too); the name of an embedded model (e.g. 'shapes');
        or the path of any Keras file: .h5 (Keras 1/2/3, weights-only or full model), .weights.h5, .keras;
        of a torchvision VGG state dict: .safetensors, .pth, .pt; or of a VGG-style ONNX graph: .onnx.
    architecture: for Keras weights-only files, 'vgg16', 'vgg19', the path of the model's config as
        `model.to_json()` writes it (.json), or None to infer a VGG-shaped model from the weight shapes
        (full-model files carry their architecture).
    preprocessing: the input preprocessing ('caffe', 'torchvision', 'scale255', 'identity'); None takes the
        file's (torchvision's for state dicts, the ONNX file's metadata, else caffe).

    Raises ModelFileError (missing or unreadable file), ArchitectureError (weights that do not fit),
    UnsupportedLayerError (a layer type fbi_ref does not implement).
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise InputError(f"a model is a name or a path, not {type(path_or_name).__name__}")
    name = os.fspath(path_or_name)
    if not name.strip():
        raise ModelFileError("the model name or path is empty")
    if name in weights_cache.KNOWN_WEIGHTS:
        path = weights_cache.weights_path(name)
        if is_torch_file(path):
            return _model(read_torchvision_file(path, name), preprocessing)
        return _model(read_keras_file(path, architecture or name.replace("_notop", "")), preprocessing)
    embedded = embedded_models()
    if name in embedded:
        return _embedded(name, embedded[name])
    path = Path(os.path.expanduser(name))
    try:
        exists = path.exists()
    except OSError as e:  # a name too long for the file system, ...
        raise ModelFileError(f"{shown(name)}: {e.strerror or e}") from None
    if not exists:
        known = ", ".join([*weights_cache.KNOWN_WEIGHTS, *embedded])
        raise ModelFileError(f"{shown(name)}: no such file, and not a known model name ({known})")
    if path.is_dir():
        raise ModelFileError(f"{shown(name)} is a folder, not a weights file")
    if is_torch_file(path):
        return _model(read_torchvision_file(path), preprocessing)
    if is_onnx_file(path):
        return _model(read_onnx_file(path), preprocessing)
    return _model(read_keras_file(path, architecture), preprocessing)


def _model(arch, preprocessing) -> Model:
    """A Model of an architecture read from a file: its preprocessing (given, the file's, or caffe), FBI's
    defaults for that input scale (the paper's for caffe, SCALE_FREE_FBI_DEFAULTS otherwise), and the
    ImageNet class names when it has 1000 classes."""
    classes = [label for _, label in CLASSES] if _num_classes(arch) == 1000 else None
    own = arch.extra.get("preprocessing")
    if arch.extra.get("input_map") and preprocessing is not None and preprocessing_rule(preprocessing) != own:
        raise InputError(f"{arch.name}: the model maps its input itself ({own.description}) and takes RGB 0..255; "
                         f"another preprocessing ({preprocessing}) would replace that map, not go before it: give none")
    rule = preprocessing or own or DEFAULT_PREPROCESSING
    defaults = {} if str(rule) == "caffe" else SCALE_FREE_FBI_DEFAULTS
    return Model(_owned(arch), classes, preprocessing=rule, fbi_defaults=defaults)


def _owned(arch):
    """The architecture a reader made, its weight arrays made read-only in place: they are the reader's own, and
    the Model then keeps them instead of copying them (a VGG16 is 528 MB)."""
    for layer in arch.layers:
        for name in layer.weights:
            read_only(getattr(layer, name))
    return arch


def _num_classes(arch):
    """The number of outputs of an architecture's last weighted layer (0 without a classifier)."""
    weighted = [layer for layer in arch.layers if layer.weights]
    return weighted[-1].kernel.shape[-1] if weighted and weighted[-1].kernel.ndim == 2 else 0


def _embedded(name, path):
    """An embedded model with its class names and FBI defaults from its manifest."""
    manifest = json.loads(path.with_suffix(".json").read_text())
    arch = read_keras_file(path, manifest.get("architecture"))
    arch.name = name
    return Model(_owned(arch), manifest.get("class_names"),
                 fbi_defaults=manifest.get("fbi_defaults", {}))
