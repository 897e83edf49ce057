"""VGG-style ONNX graphs as Architectures in fbi_ref's layout, through the `onnx` package (an optional extra).

A graph is read when it is one chain of these ops from its one input to its one output: Conv, Relu, MaxPool,
Flatten or Reshape (to (N, -1)), Gemm or MatMul (+ Add), BatchNormalization (folded into the Conv or Gemm
before it), Softmax (at the end), Dropout and Identity (the identity at inference), and Transpose where it only
changes the layout between NCHW and NHWC (tf2onnx puts one in front of a Keras model's NHWC input, and one
before its flatten). Any other op is refused with its name.

fbi_ref computes in NHWC: a graph whose input is NCHW (torch.onnx.export) gives a model that takes the same
images as x.transpose(0, 2, 3, 1); a graph whose input is NHWC (tf2onnx) one that takes them as they are.
Kernels are converted once (OIHW -> HWIO, Gemm's B to (in, out)), and a dense layer after a flatten in NCHW
order gets its rows reordered to fbi_ref's (H, W, C) order, so the logits and every activation equal
onnxruntime's. Layers get Keras's VGG names (block1_conv1, ..., block1_pool, flatten, fc1, ..., predictions).

Files are untrusted: the file is read whole only up to a size its weights can need; tensors kept in other files
(external data) are refused, since reading them would read other files; every tensor's declared size is
checked against its data and against MAX_MODEL_BYTES before it is turned into an array. The preprocessing is
the one the file's metadata names under `fbi_ref.preprocessing` ('caffe', 'torchvision', 'scale255',
'identity'); without it, load_model uses caffe unless told otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fbi_ref.errors import ArchitectureError, ModelFileError, UnsupportedLayerError
from fbi_ref.io.keras_files import MAX_MODEL_BYTES
from fbi_ref.io.paths import errors_named, input_file
from fbi_ref.nn.architectures import named_like_keras
from fbi_ref.nn.geometry import same_padding
from fbi_ref.nn.network import Activation, Architecture, Conv2D, Dense, Flatten, MaxPool2D
from fbi_ref.nn.weights import fold_batch_norm

SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "BatchNormalization",
                 "Softmax", "Dropout", "Identity", "Transpose", "Constant", "AveragePool (1 x 1, the identity)")
METADATA_PREPROCESSING = "fbi_ref.preprocessing"
_MAX_FILE_BYTES = 2 * MAX_MODEL_BYTES + 16 * 2**20  # float64 weights at most, plus the graph's own records
_MAX_NODES = 10_000
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def is_onnx_file(path) -> bool:
    """True for the file names this module reads (.onnx)."""
    return Path(path).suffix.lower() == ".onnx"


def read_onnx_file(path) -> Architecture:
    """The VGG-style graph in an ONNX file, in fbi_ref's layout (see the module docstring)."""
    path = input_file(path, "ONNX file", ModelFileError)
    with errors_named(path, "ONNX file"):
        return onnx_architecture(_load(path), path.stem)


def _load(path: Path):
    """The ModelProto of a file of at most _MAX_FILE_BYTES, with no tensor kept outside it."""
    try:
        import onnx
    except ImportError:
        raise ModelFileError("reading .onnx needs the onnx package: pip install 'fbi_ref[onnx]'") from None
    with open(path, "rb") as file:
        data = file.read(_MAX_FILE_BYTES + 1)  # never more than the limit, whatever the file grows to
    if len(data) > _MAX_FILE_BYTES:
        raise ModelFileError(f"more than {_MAX_FILE_BYTES:,} bytes, more than a model of at most "
                             f"{MAX_MODEL_BYTES:,} bytes of weights can need (FBI_REF_MAX_MODEL_BYTES)")
    # From bytes, onnx has no folder to look for external data in: it never opens another file.
    return onnx.load_model_from_string(data)


# --- tensors ----------------------------------------------------------------------------------------------

def _tensors(graph) -> dict:
    """{name: array} of the graph's initializers and Constant nodes, each checked before it is read."""
    from onnx import TensorProto
    protos = list(graph.initializer) + [_constant_value(node) for node in graph.node if node.op_type == "Constant"]
    if len(graph.sparse_initializer):
        raise ModelFileError("sparse initializers are not supported")
    total = 0
    for proto in protos:
        total += _checked_size(proto, TensorProto)
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(f"the tensors declare {total:,} bytes, more than the {MAX_MODEL_BYTES:,} allowed "
                             f"(FBI_REF_MAX_MODEL_BYTES)")
    from onnx import numpy_helper
    return {proto.name: numpy_helper.to_array(proto) for proto in protos}


def _constant_value(node):
    """The tensor of a Constant node (its 'value' attribute), named after the node's output."""
    values = [a for a in node.attribute if a.name == "value"]
    if len(values) != 1 or len(node.output) != 1:
        raise UnsupportedLayerError(f"Constant node {node.name!r}: only a 'value' tensor is supported")
    tensor = values[0].t
    tensor.name = node.output[0]
    return tensor


_ITEM_SIZES = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4}  # FLOAT, FLOAT16, DOUBLE, INT64, INT32


def _checked_size(proto, TensorProto) -> int:
    """The float32 bytes a tensor will take; ModelFileError for external data, other dtypes, or a size its
    data does not hold."""
    if proto.data_location == TensorProto.EXTERNAL or len(proto.external_data):
        raise ModelFileError(f"tensor {proto.name!r} keeps its data in another file; fbi_ref reads only the file "
                             f"itself")
    if proto.data_type not in _ITEM_SIZES:
        raise ModelFileError(f"tensor {proto.name!r} has ONNX data type {proto.data_type}; fbi_ref reads float16, "
                             f"float32, float64 and int32/int64 shapes")
    if any(d < 0 for d in proto.dims) or len(proto.dims) > 8:
        raise ModelFileError(f"tensor {proto.name!r} declares shape {list(proto.dims)}")
    count = math.prod(proto.dims)
    if 4 * count > MAX_MODEL_BYTES:
        raise ModelFileError(f"tensor {proto.name!r} declares {count:,} values, more than allowed")
    stored = (len(proto.raw_data) // _ITEM_SIZES[proto.data_type] if proto.raw_data else
              len(proto.float_data) + len(proto.double_data) + len(proto.int64_data) + len(proto.int32_data))
    if stored != count:
        raise ModelFileError(f"tensor {proto.name!r} declares {count:,} values and holds {stored:,}")
    return 4 * count


# --- the graph --------------------------------------------------------------------------------------------

@dataclass
class _Chain:
    """The walk along the graph: the layers so far, the current tensor, its layout and shape (H, W, C)."""
    tensors: dict
    current: str
    layout: str  # 'input' (not yet known), 'nchw', 'nhwc', or 'flat'
    shape: tuple  # (H, W, C) of the feature map; (units,) once flat
    layers: list = field(default_factory=list)
    flat_chw: tuple | None = None  # (C, H, W) when the last flatten was in NCHW order and no dense has followed
    last_op: str = ""
    input_hwc: tuple = ()  # the model's input (H, W, C), known once the first node says the input's layout


def onnx_architecture(model, name: str = "onnx_vgg") -> Architecture:
    """A ModelProto's VGG-style graph as an Architecture with Keras's VGG layer names."""
    graph = model.graph
    if len(graph.node) > _MAX_NODES:
        raise ModelFileError(f"{len(graph.node):,} nodes: not a VGG-style graph")
    tensors = _tensors(graph)
    data_input = _data_input(graph, tensors)
    dims = _input_dims(data_input)
    chain = _Chain(tensors, data_input.name, "input", dims)
    _check_chain(graph, tensors)
    for node in graph.node:
        if node.op_type != "Constant":
            _step(chain, node)
    outputs = [o.name for o in graph.output]
    if outputs != [chain.current]:
        raise ArchitectureError(f"the graph's outputs {outputs} are not the end of its chain ({chain.current})")
    layers = _named(chain.layers)
    preprocessing = {p.key: p.value for p in model.metadata_props}.get(METADATA_PREPROCESSING)
    extra = {"preprocessing": preprocessing} if preprocessing else {}
    return Architecture(layers, chain.input_hwc, name, extra=extra)


def _data_input(graph, tensors: dict):
    """The graph's one input that is not an initializer (ONNX before IR 4 lists initializers as inputs too)."""
    inputs = [i for i in graph.input if i.name not in tensors]
    if len(inputs) != 1:
        raise ArchitectureError(f"the graph has {len(inputs)} data inputs; fbi_ref reads graphs with one image input")
    return inputs[0]


def _input_dims(value_info) -> tuple:
    """The input's four dimensions after the batch, as written (layout decided by the first node)."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
        raise ArchitectureError(f"the input {value_info.name!r} has shape {dims}; fbi_ref needs (N, C, H, W) or "
                                f"(N, H, W, C) with fixed H, W, C (export with a fixed image size)")
    return tuple(dims[1:])


def _check_chain(graph, tensors: dict) -> None:
    """Every tensor that is not a weight feeds one node at most: the graph is a chain, without branches."""
    used = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in tensors:
                used[name] = used.get(name, 0) + 1
    branching = [name for name, count in used.items() if count > 1]
    if branching:
        raise ArchitectureError(f"tensor {branching[0]!r} feeds {used[branching[0]]} nodes; fbi_ref reads "
                                f"sequential graphs (one chain of layers)")


def _step(chain: _Chain, node) -> None:
    """Take one node: check it continues the chain, then add or change a layer."""
    if node.op_type not in _OPS:
        raise UnsupportedLayerError(f"ONNX op {node.op_type} (node {node.name!r}) is not supported; fbi_ref reads "
                                    f"VGG-style graphs of {', '.join(SUPPORTED_OPS)}")
    if not node.input or node.input[0] != chain.current:
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}) does not take the previous layer's output; "
                                f"fbi_ref reads sequential graphs")
    for name in node.input[1:]:
        if name and name not in chain.tensors:
            raise ArchitectureError(f"node {node.name!r} ({node.op_type}): input {name!r} is not a constant")
    for extra in node.output[1:]:
        if extra:
            raise UnsupportedLayerError(f"node {node.name!r} ({node.op_type}): a second output is not supported")
    if chain.layout == "input" and not (node.op_type == "Transpose" and _attr(node, "perm") == _TO_NCHW):
        chain.layout, chain.input_hwc = "nchw", _nchw_to_hwc(chain.shape)
        chain.shape = chain.input_hwc
    _OPS[node.op_type](chain, node)
    chain.current, chain.last_op = node.output[0], node.op_type


def _nchw_to_hwc(dims: tuple) -> tuple:
    """(C, H, W) -> (H, W, C)."""
    return dims[1], dims[2], dims[0]


def _attr(node, name, default=None):
    """A node's attribute as a Python value (ints, floats, strings, lists), or `default`."""
    from onnx import helper
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else list(value) if isinstance(value, (list, tuple)) \
                else value
    return default


def _weight(chain: _Chain, node, index: int, ndim: tuple, what: str) -> np.ndarray | None:
    """A node's constant input `index` as float32, of one of the ranks `ndim` (None when absent)."""
    if len(node.input) <= index or not node.input[index]:
        return None
    array = chain.tensors[node.input[index]]
    if array.ndim not in ndim or array.dtype.kind != "f":
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): {what} has shape {array.shape} and dtype "
                                f"{array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ModelFileError(f"node {node.name!r} ({node.op_type}): {what} holds NaN or infinite values")
    return array


def _need(chain: _Chain, node, layout: str) -> None:
    """The current tensor must be in `layout`."""
    if chain.layout != layout:
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}) needs a {layout.upper()} input, the chain's "
                                f"tensor is {chain.layout.upper()}")


# --- one op each ------------------------------------------------------------------------------------------

def _transpose(chain: _Chain, node) -> None:
    """A layout change between NCHW and NHWC (free in fbi_ref, which is NHWC throughout)."""
    perm = _attr(node, "perm")
    if chain.layout == "input" and perm == _TO_NCHW:  # tf2onnx: an NHWC input turned NCHW
        chain.layout, chain.input_hwc = "nchw", chain.shape
    elif chain.layout == "nchw" and perm == _TO_NHWC:
        chain.layout = "nhwc"
    elif chain.layout == "nhwc" and perm == _TO_NCHW:
        chain.layout = "nchw"
    else:
        raise UnsupportedLayerError(f"node {node.name!r}: Transpose with perm {perm} on a {chain.layout.upper()} "
                                    f"tensor is not a layout change fbi_ref follows")


def _conv(chain: _Chain, node) -> None:
    """Conv (OIHW, group 1, dilation 1) -> Conv2D (HWIO) with 'same' or 'valid' padding."""
    _need(chain, node, "nchw")
    weight = _weight(chain, node, 1, (4,), "the kernel")  # (O, I, kh, kw)
    out, ins, kh, kw = weight.shape
    h, w, c = chain.shape
    if ins != c or _attr(node, "group", 1) != 1 or set(_attr(node, "dilations", [1, 1])) != {1}:
        raise UnsupportedLayerError(f"node {node.name!r}: Conv with kernel {weight.shape}, group "
                                    f"{_attr(node, 'group', 1)}, dilations {_attr(node, 'dilations')} on {c} channels; "
                                    f"fbi_ref reads plain convolutions")
    bias = _weight(chain, node, 2, (1,), "the bias")
    bias = np.zeros(out, np.float32) if bias is None else bias
    strides = tuple(_attr(node, "strides", [1, 1]))
    padding, (ho, wo) = _padding(node, (h, w), (kh, kw), strides)
    chain.layers.append(Conv2D("", np.ascontiguousarray(weight.transpose(2, 3, 1, 0)), bias, strides,
                               padding, "linear"))
    chain.shape = (ho, wo, out)


def _padding(node, size, kernel, strides) -> tuple:
    """('same' | 'valid', (Ho, Wo)) of a Conv or MaxPool; UnsupportedLayerError for any other padding."""
    same = [same_padding(n, k, s)[1:] for n, k, s in zip(size, kernel, strides)]  # [(before, after)] per axis
    auto = _attr(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        first = 0 if auto == "SAME_UPPER" else 1  # SAME_LOWER puts the odd cell before
        pads = [p[first] for p in same] + [p[1 - first] for p in same]
    else:
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if pads == [0, 0, 0, 0]:
        out = [(n - k) // s + 1 for n, k, s in zip(size, kernel, strides)]
        return "valid", tuple(out)
    if pads == [same[0][0], same[1][0], same[0][1], same[1][1]]:
        return "same", tuple(-(-n // s) for n, s in zip(size, strides))
    raise UnsupportedLayerError(f"node {node.name!r} ({node.op_type}): pads {pads} are neither 'valid' nor "
                                f"TensorFlow's 'same' (the odd cell after) at input {tuple(size)}")


def _relu(chain: _Chain, node) -> None:
    """Fused into the conv or dense layer just before; a stand-alone Activation otherwise."""
    last = chain.layers[-1] if chain.layers else None
    if chain.last_op in ("Conv", "Gemm", "MatMul", "Add", "BatchNormalization") and last.activation == "linear":
        chain.layers[-1] = replace(last, activation="relu")
    else:
        chain.layers.append(Activation("", "relu"))


def _maxpool(chain: _Chain, node) -> None:
    """MaxPool (no ceil mode, dilation, storage order or indices) -> MaxPool2D."""
    _need(chain, node, "nchw")
    kernel = tuple(_attr(node, "kernel_shape"))
    if (_attr(node, "ceil_mode", 0) or set(_attr(node, "dilations", [1, 1])) != {1} or _attr(node, "storage_order", 0)
            or len(kernel) != 2):
        raise UnsupportedLayerError(f"node {node.name!r}: MaxPool with ceil_mode, dilations or storage_order")
    strides = tuple(_attr(node, "strides", [1, 1]))
    h, w, c = chain.shape
    padding, (ho, wo) = _padding(node, (h, w), kernel, strides)
    chain.layers.append(MaxPool2D("", kernel, strides, padding))
    chain.shape = (ho, wo, c)


def _flatten(chain: _Chain, node) -> None:
    """Flatten at axis 1 (or Reshape to (N, -1)) of a feature map, in the order of its layout."""
    if chain.layout not in ("nchw", "nhwc"):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): the tensor is already flat")
    if node.op_type == "Flatten" and _attr(node, "axis", 1) != 1:
        raise UnsupportedLayerError(f"node {node.name!r}: Flatten at axis {_attr(node, 'axis')}, not 1")
    h, w, c = chain.shape
    if node.op_type == "Reshape":
        shape = [int(v) for v in chain.tensors[node.input[1]].ravel()]
        if len(shape) != 2 or shape[1] not in (-1, h * w * c) or shape[0] not in (-1, 0, 1):
            raise UnsupportedLayerError(f"node {node.name!r}: Reshape to {shape}; fbi_ref reads a flatten (N, -1)")
    chain.flat_chw = (c, h, w) if chain.layout == "nchw" else None
    chain.layers.append(Flatten(""))
    chain.layout, chain.shape = "flat", (h * w * c,)


def _dense(chain: _Chain, node) -> None:
    """Gemm (alpha = beta = 1, A not transposed) or MatMul by a constant -> Dense (in, out)."""
    _need(chain, node, "flat")
    kernel = _weight(chain, node, 1, (2,), "the weight")
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            raise UnsupportedLayerError(f"node {node.name!r}: Gemm with transA, alpha or beta other than 0, 1, 1")
        kernel = kernel.T if _attr(node, "transB", 0) else kernel  # (in, out)
    (n_in,) = chain.shape
    if kernel.shape[0] != n_in:
        raise ArchitectureError(f"node {node.name!r}: weight {kernel.shape} on {n_in} inputs")
    if chain.flat_chw is not None:  # rows in torch's (C, H, W) flatten order -> fbi_ref's (H, W, C)
        c, h, w = chain.flat_chw
        kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(n_in, -1)  # (in, out)
        chain.flat_chw = None
    bias = _weight(chain, node, 2, (0, 1, 2), "the bias") if node.op_type == "Gemm" else None
    out = kernel.shape[1]
    bias = np.zeros(out, np.float32) if bias is None else _vector_of(node, bias, out)
    chain.layers.append(Dense("", np.ascontiguousarray(kernel), bias, "linear"))
    chain.shape = (out,)


def _vector_of(node, array: np.ndarray, size: int) -> np.ndarray:
    """A bias of shape (), (size,), (1, size) or (1, size, 1, 1) as (size,) float32."""
    if array.size not in (1, size) or (array.ndim and max(array.shape) != array.size):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): a bias of shape {array.shape} for {size} "
                                f"units")
    return np.ascontiguousarray(np.broadcast_to(array.ravel(), (size,)), dtype=np.float32)


def _add(chain: _Chain, node) -> None:
    """A constant bias added right after a MatMul or Conv: folded into that layer's bias."""
    last = chain.layers[-1] if chain.layers else None
    if chain.last_op not in ("MatMul", "Conv", "Gemm") or last.activation != "linear":
        raise UnsupportedLayerError(f"node {node.name!r}: Add is supported only as the bias of a MatMul or Conv")
    bias = _weight(chain, node, 1, (0, 1, 2, 3, 4), "the added constant")
    size = last.bias.shape[0]
    # ONNX broadcasts from the right: after a Conv (N, C, H, W) a per-channel bias is (C, 1, 1) or (1, C, 1, 1);
    # a (C,) or (1, C) constant would be added along W instead, which is not a bias of this layer
    fits = ((size,), (1, size)) if chain.last_op != "Conv" else ((size, 1, 1), (1, size, 1, 1))
    if bias.size != 1 and bias.shape not in fits:
        raise UnsupportedLayerError(f"node {node.name!r}: Add of a constant of shape {bias.shape} after a "
                                    f"{chain.last_op} of {size} units is not a per-unit bias "
                                    f"(expected {' or '.join(map(str, fits))})")
    chain.layers[-1] = replace(last, bias=last.bias + _vector_of(node, bias, size))


def _batch_norm(chain: _Chain, node) -> None:
    """Eval-mode BatchNormalization right after a Conv or Gemm: folded into its kernel and bias."""
    last = chain.layers[-1] if chain.layers else None
    if chain.last_op not in ("Conv", "Gemm", "MatMul", "Add") or last.activation != "linear":
        raise UnsupportedLayerError(f"node {node.name!r}: BatchNormalization is supported only right after a "
                                    f"Conv or Gemm (where it is folded into them)")
    if _attr(node, "training_mode", 0):
        raise UnsupportedLayerError(f"node {node.name!r}: BatchNormalization in training mode")
    size = last.bias.shape[0]
    stats = [_vector_of(node, _weight(chain, node, i, (1,), "a statistic"), size) for i in range(1, 5)]
    kernel, bias = fold_batch_norm(last.kernel, last.bias, *stats, _attr(node, "epsilon", 1e-5))
    chain.layers[-1] = replace(last, kernel=np.ascontiguousarray(kernel), bias=bias)


def _softmax(chain: _Chain, node) -> None:
    """The final softmax over the classes: the last dense layer's activation."""
    last = chain.layers[-1] if chain.layers else None
    if chain.layout != "flat" or not isinstance(last, Dense) or last.activation != "linear" \
            or _attr(node, "axis", -1) not in (-1, 1):
        raise UnsupportedLayerError(f"node {node.name!r}: Softmax is supported only over the classes, after the "
                                    f"last Gemm or MatMul")
    chain.layers[-1] = replace(last, activation="softmax")


def _identity(chain: _Chain, node) -> None:
    """Dropout and Identity: the identity at inference."""


def _average_pool(chain: _Chain, node) -> None:
    """A 1 x 1 AveragePool with stride 1: the identity. torch.onnx.export writes torchvision's
    AdaptiveAvgPool2d((7, 7)) so on a 7 x 7 map (224 x 224 input); any other average pool is refused."""
    if (_attr(node, "kernel_shape") != [1, 1] or _attr(node, "strides", [1, 1]) != [1, 1]
            or set(_attr(node, "pads", [0])) != {0}):
        raise UnsupportedLayerError(f"node {node.name!r}: AveragePool with kernel {_attr(node, 'kernel_shape')} "
                                    f"is not the identity (torchvision's VGG at an input other than 224 x 224?); "
                                    f"fbi_ref reads only the 1 x 1 one")


_OPS = {"Conv": _conv, "Relu": _relu, "MaxPool": _maxpool, "Flatten": _flatten, "Reshape": _flatten,
        "Gemm": _dense, "MatMul": _dense, "Add": _add, "BatchNormalization": _batch_norm, "Softmax": _softmax,
        "Dropout": _identity, "Identity": _identity, "Transpose": _transpose, "AveragePool": _average_pool}


def _named(layers: list) -> list:
    """The layers with Keras's VGG names; the last dense layer is 'predictions', with a softmax."""
    named = named_like_keras(layers)  # each layer was made without a name
    denses = [i for i, layer in enumerate(named) if isinstance(layer, Dense)]
    if not any(isinstance(layer, Conv2D) for layer in named) or not denses:
        raise ArchitectureError("the graph has no Conv or no Gemm/MatMul: not a VGG-style classifier")
    if named[denses[-1]].activation == "linear":  # the logits stay this layer's pre-activation
        named[denses[-1]] = replace(named[denses[-1]], activation="softmax")
    return named
