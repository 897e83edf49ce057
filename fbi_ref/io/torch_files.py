"""torchvision VGG state dicts (VGG11/13/16/19 and their _bn variants) as Architectures in fbi_ref's layout.

Read from `.safetensors` with the `safetensors` package's NumPy API (no torch needed), or from `.pth`/`.pt`
through `torch.load(weights_only=True)` when torch is installed. Everything torch does differently is converted
once, here, so that the network and every activation equal torchvision's eval-mode forward pass:

- conv kernels OIHW -> HWIO; linear weights (out, in) -> (in, out);
- batch norm (the `_bn` variants) folded into the convolution before it: W' = W s, b' = (b - mean) s + beta
  with s = gamma / sqrt(var + eps), eps = 1e-5 (BatchNorm2d's default; a state dict does not store it);
- torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier is the identity at 224 x 224 input, where the
  last feature map is already 7 x 7: the model's input is fixed at 7 * 2**pools, where it is the identity;
- the first classifier layer's rows reordered from torch's (C, H, W) flatten order to fbi_ref's (H, W, C);
- ReLU fused into the layer before it; Dropout is the identity at inference and left out.

Layers get Keras's VGG names (block1_conv1, ..., block5_pool, flatten, fc1, fc2, predictions), so reference
files of a Keras and a torchvision VGG name the same positions alike. A file cannot make fbi_ref allocate more
than it declares: every tensor's shape and dtype is checked against MAX_MODEL_BYTES before any is read.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from fbi_ref.errors import ArchitectureError, ModelFileError
from fbi_ref.io.keras_files import MAX_MODEL_BYTES
from fbi_ref.io.paths import errors_named, input_file
from fbi_ref.nn.architectures import named_like_keras
from fbi_ref.nn.network import Architecture, Conv2D, Dense, Flatten, MaxPool2D
from fbi_ref.nn.weights import fold_batch_norm

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default
AVGPOOL_SIDE = 7  # torchvision's VGG: AdaptiveAvgPool2d((7, 7))
SAFETENSORS_SUFFIXES = (".safetensors",)
PTH_SUFFIXES = (".pth", ".pt")
_MAX_TENSORS = 10_000
# Module indices as torch writes them: no leading zeros ('features.00.weight' would collide with 'features.0.weight',
# which torch's load_state_dict tells apart and refuses).
_FEATURE = re.compile(r"features\.(0|[1-9]\d{0,5})\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_CLASSIFIER = re.compile(r"classifier\.(0|[1-9]\d{0,5})\.(weight|bias)")
KERNEL_SIDE = 3  # torchvision's VGG: every conv 3 x 3 with padding 1
# safetensors dtype names -> NumPy; bfloat16 has no NumPy type (convert such a file to float32 first).
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64}


def is_torch_file(path) -> bool:
    """True for the file names this module reads (.safetensors, .pth, .pt)."""
    return Path(path).suffix.lower() in SAFETENSORS_SUFFIXES + PTH_SUFFIXES


def read_torchvision_file(path, name=None) -> Architecture:
    """The torchvision VGG in a .safetensors or .pth state dict, in fbi_ref's layout (see the module docstring)."""
    path = input_file(path, "torchvision weights file", ModelFileError)
    with errors_named(path, "state dict"):
        state = read_state_dict(path)
        return torchvision_vgg(state, name)


def read_state_dict(path: Path) -> dict:
    """{key: float32 or int64 array} of a .safetensors or .pth file, sizes checked before anything is read."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if path.suffix.lower() in PTH_SUFFIXES:
        return _read_pth(path)
    raise ModelFileError("not a .safetensors, .pth or .pt file")


# --- reading ---------------------------------------------------------------------------------------------

def _read_safetensors(path: Path) -> dict:
    """A .safetensors file through safetensors' NumPy API: shapes and dtypes checked from the header first."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModelFileError("reading .safetensors needs the safetensors package: "
                             "pip install 'fbi_ref[safetensors]'") from None
    with safe_open(str(path), framework="numpy") as file:  # reads the header only; checks offsets vs file size
        keys = list(file.keys())
        _check_count(len(keys))
        declared = {key: (file.get_slice(key).get_dtype(), tuple(file.get_slice(key).get_shape())) for key in keys}
        for key, (dtype, _) in declared.items():
            if dtype not in _SAFETENSORS_DTYPES:
                raise ModelFileError(f"tensor {key} has dtype {dtype}; fbi_ref reads F32, F16, F64 (convert it)")
        _check_bytes(shape for _, shape in declared.values())
        return {key: _as_weight(key, file.get_tensor(key)) for key in keys}


def _read_pth(path: Path) -> dict:
    """A .pth file through torch.load(weights_only=True), which unpickles tensors and containers only."""
    try:
        import torch
    except ImportError:
        raise ModelFileError("reading .pth needs PyTorch (pip install torch), or convert the file to "
                             ".safetensors (safetensors.torch.save_file) and read that without torch") from None
    size = path.stat().st_size
    if size > 2 * MAX_MODEL_BYTES:  # float64 weights at most, plus the pickle's few records
        raise ModelFileError(f"{size:,} bytes, more than a model of at most {MAX_MODEL_BYTES:,} bytes of "
                             f"weights can need (FBI_REF_MAX_MODEL_BYTES)")
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    # mmap maps the tensors instead of reading them (only the zip format, torch >= 1.6, allows it), and only
    # where the records are stored as they are: torch maps a compressed record's bytes as if they were the
    # tensor's (a checkpoint re-zipped by Info-ZIP gave biases of 1e20). Those are read without mmap.
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip and _all_stored(path))
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint: {'state_dict': ..., 'epoch': ...}
    if not isinstance(loaded, dict):
        raise ModelFileError(f"holds a {type(loaded).__name__}, not a state dict")
    _check_count(len(loaded))
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelFileError(f"entry {str(key)[:60]!r} is a {type(value).__name__}, not a tensor")
    _check_bytes(tuple(value.shape) for value in loaded.values())
    return {key: _as_weight(key, _tensor_to_numpy(torch, value)) for key, value in loaded.items()}


def _all_stored(path: Path) -> bool:
    """True when every record of the zip is stored uncompressed (as torch.save writes them)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            return all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    except zipfile.BadZipFile:
        return False  # torch.load says what is wrong with it


def _tensor_to_numpy(torch, tensor) -> np.ndarray:
    """A CPU tensor as NumPy; floating ones (bfloat16 included) as float32."""
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def _check_count(count: int) -> None:
    """At most _MAX_TENSORS tensors (a VGG19_bn has 118)."""
    if count > _MAX_TENSORS:
        raise ModelFileError(f"{count:,} tensors: not a VGG state dict")


def _check_bytes(shapes) -> None:
    """The declared tensors take at most MAX_MODEL_BYTES as float32."""
    total = sum(4 * math.prod(shape) for shape in shapes)
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(f"the tensors declare {total:,} bytes, more than the {MAX_MODEL_BYTES:,} allowed "
                             f"(FBI_REF_MAX_MODEL_BYTES)")


def _as_weight(key: str, array: np.ndarray) -> np.ndarray:
    """A tensor as float32 (int64 for BatchNorm's num_batches_tracked); ModelFileError for NaN or inf."""
    if key.endswith("num_batches_tracked"):
        return np.asarray(array)
    if array.dtype.kind != "f":
        raise ModelFileError(f"tensor {key} has dtype {array.dtype}, not floating point")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ModelFileError(f"tensor {key} holds NaN or infinite values")
    return array


# --- the VGG in a state dict ---------------------------------------------------------------------------

def torchvision_vgg(state: dict, name=None) -> Architecture:
    """A torchvision VGG state dict {key: array} as an Architecture (weights converted, batch norm folded)."""
    state = _without_prefix(state)
    features, classifier = _modules(state)
    convs, pools = _conv_sequence(features)
    batch_norm = any("running_mean" in module for module in features.values())
    layers, channels = _feature_layers(features, convs, pools)
    side, top = _classifier_layers(classifier, channels)
    name = name or f"torchvision_vgg{len(convs) + len(top) - 1}{'_bn' if batch_norm else ''}"
    input_side = side * 2 ** sum(pools)
    return Architecture(named_like_keras(layers + top), (input_side, input_side, 3), name,
                        extra={"preprocessing": "torchvision"})


def _without_prefix(state: dict) -> dict:
    """The state dict without the 'module.' prefix torch.nn.DataParallel adds to every key."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _modules(state: dict) -> tuple:
    """({features index: {param: array}}, {classifier index: {param: array}}); any other key is refused."""
    features, classifier = {}, {}
    for key, array in state.items():
        if match := _FEATURE.fullmatch(key):
            features.setdefault(int(match.group(1)), {})[match.group(2)] = array
        elif match := _CLASSIFIER.fullmatch(key):
            classifier.setdefault(int(match.group(1)), {})[match.group(2)] = array
        else:
            raise ArchitectureError(f"unexpected key {key[:80]!r}: not a torchvision VGG state dict "
                                    f"(features.N.weight/bias[/running_mean/running_var], classifier.N.weight/bias)")
    if not features:
        raise ArchitectureError("no features.N.weight keys: not a torchvision VGG state dict")
    return features, classifier


def _conv_sequence(features: dict) -> tuple:
    """([conv module indices], [pools after each conv: 0 or 1]) from torchvision's make_layers numbering.

    make_layers numbers its modules conv, [batch norm], relu per convolution and one max-pool per 'M'; every
    configuration ends with 'M', so the last convolution is followed by a pool.
    """
    convs = [index for index, module in sorted(features.items()) if "running_mean" not in module]
    for index in convs:
        weight = features[index].get("weight")
        if weight is None or weight.ndim != 4:
            raise ArchitectureError(f"features.{index}: expected a conv weight (O, I, kh, kw), "
                                    f"found {None if weight is None else weight.shape}")
    pools = []
    for position, index in enumerate(convs):
        after = index + (3 if index + 1 in features else 2)  # the module after this conv's relu
        following = convs[position + 1] if position + 1 < len(convs) else after + 1
        gap = following - after
        if gap not in (0, 1):
            raise ArchitectureError(f"features.{following}: {gap} modules without weights after features.{index}; "
                                    f"torchvision's VGG has its ReLU and at most one max-pool there")
        pools.append(gap)
    return convs, pools


def _feature_layers(features: dict, convs: list, pools: list) -> tuple:
    """(fbi_ref conv and pool layers, named later, the last conv's channel count)."""
    layers, channels = [], 3
    for index, pool in zip(convs, pools):
        kernel, bias = _conv_weights(features, index, channels)
        layers.append(Conv2D("", kernel, bias))
        channels = kernel.shape[-1]
        if pool:
            layers.append(MaxPool2D(""))
    return layers, channels


def _conv_weights(features: dict, index: int, channels: int) -> tuple:
    """(kernel (kh, kw, I, O), bias (O,)) of features.index, with the batch norm after it folded in."""
    module = features[index]
    weight = module["weight"]  # (O, I, kh, kw)
    out, ins, kh, kw = weight.shape
    if ins != channels or kh != KERNEL_SIDE or kw != KERNEL_SIDE:
        raise ArchitectureError(f"features.{index}.weight has shape {weight.shape}; expected ({out}, {channels}, 3, 3) "
                                f"(torchvision's VGG: every conv 3 x 3 with padding 1)")
    bias = _vector(module, "bias", index, out, default=np.zeros(out, np.float32))
    if index + 1 in features:
        weight, bias = fold_batch_norm(weight, bias, *_batch_norm(features[index + 1], index + 1, out), BN_EPS, axis=0)
    kernel = np.ascontiguousarray(weight.transpose(2, 3, 1, 0), dtype=np.float32)  # (kh, kw, I, O)
    return kernel, np.ascontiguousarray(bias, dtype=np.float32)


def _batch_norm(module: dict, index: int, out: int) -> tuple:
    """(gamma, beta, running_mean, running_var) of features.index, each (out,)."""
    return tuple(_vector(module, key, index, out) for key in ("weight", "bias", "running_mean", "running_var"))


def _vector(module: dict, key: str, index: int, size: int, default=None) -> np.ndarray:
    """module[key], which must have shape (size,)."""
    value = module.get(key, default)
    if value is None:
        raise ArchitectureError(f"features.{index}.{key} is missing")
    if value.shape != (size,):
        raise ArchitectureError(f"features.{index}.{key} has shape {value.shape}, expected ({size},)")
    return value


def _classifier_layers(classifier: dict, channels: int) -> tuple:
    """(the side of the last feature map, [Flatten, Dense ...]) from classifier.0, .3, .6 (Linear, ReLU, Dropout)."""
    if not classifier:
        raise ArchitectureError("no classifier.N.weight keys: fbi_ref needs the classifier (a model with its top)")
    indices = sorted(classifier)
    if indices != list(range(0, 3 * len(indices), 3)):
        raise ArchitectureError(f"classifier layers at {indices}; torchvision's VGG has Linear, ReLU, Dropout "
                                f"repeated (classifier.0, .3, .6)")
    first_in = _linear_shape(classifier, indices[0])[1]
    side = math.isqrt(first_in // channels) if first_in % channels == 0 else 0
    if side * side * channels != first_in:
        raise ArchitectureError(f"classifier.0 takes {first_in} inputs, not {channels} channels x side x side")
    if side != AVGPOOL_SIDE:
        raise ArchitectureError(f"classifier.0 takes {channels} x {side} x {side} inputs; torchvision's VGG "
                                f"average-pools to {AVGPOOL_SIDE} x {AVGPOOL_SIDE}")
    layers, n_in = [Flatten("")], first_in
    for position, index in enumerate(indices):
        last = position == len(indices) - 1
        weight, bias = classifier[index].get("weight"), classifier[index].get("bias")
        out = _linear_shape(classifier, index)[0]
        if weight.shape != (out, n_in) or bias is None or bias.shape != (out,):
            raise ArchitectureError(f"classifier.{index}: weight {weight.shape} and bias "
                                    f"{None if bias is None else bias.shape}; expected ({out}, {n_in}) and ({out},)")
        if position == 0:
            weight = chw_rows_to_hwc(weight, channels, side)
        layers.append(Dense("", np.ascontiguousarray(weight.T), np.ascontiguousarray(bias),
                            "softmax" if last else "relu"))
        n_in = out
    return side, layers


def _linear_shape(classifier: dict, index: int) -> tuple:
    """(out, in) of classifier.index's weight."""
    weight = classifier[index].get("weight")
    if weight is None or weight.ndim != 2:
        raise ArchitectureError(f"classifier.{index}.weight: expected a Linear weight (out, in), "
                                f"found {None if weight is None else weight.shape}")
    return weight.shape


def chw_rows_to_hwc(weight: np.ndarray, channels: int, side: int) -> np.ndarray:
    """A Linear weight (out, C*H*W) on torch's flatten order -> (out, H*W*C) on fbi_ref's (H, W, C) order."""
    out = weight.shape[0]
    return weight.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, -1)  # (out, H*W*C)


def torchvision_state_dict(arch: Architecture) -> dict:
    """The inverse conversion: a VGG Architecture (convs, pools, flatten, dense) as a torchvision VGG state dict
    {key: float32 array} (batch norm, if it was folded, stays folded: load it into the plain VGG)."""
    state, feature, classifier = {}, 0, 0
    side, channels = arch.input_shape[0], 3
    for layer in arch.layers:
        if isinstance(layer, Conv2D):
            state[f"features.{feature}.weight"] = np.ascontiguousarray(layer.kernel.transpose(3, 2, 0, 1))  # OIHW
            state[f"features.{feature}.bias"] = np.asarray(layer.bias)
            feature, channels = feature + 2, layer.kernel.shape[-1]  # conv, relu
        elif isinstance(layer, MaxPool2D):
            feature, side = feature + 1, side // 2
        elif isinstance(layer, Dense):
            weight = np.asarray(layer.kernel).T  # (out, in)
            if classifier == 0:  # back to torch's (C, H, W) flatten order
                out = weight.shape[0]
                weight = weight.reshape(out, side, side, channels).transpose(0, 3, 1, 2).reshape(out, -1)
            state[f"classifier.{classifier}.weight"] = np.ascontiguousarray(weight)
            state[f"classifier.{classifier}.bias"] = np.asarray(layer.bias)
            classifier += 3  # linear, relu, dropout
    return state
