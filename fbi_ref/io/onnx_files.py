"""VGG-style ONNX graphs as Architectures in fbi_ref's layout, through the `onnx` package (an optional extra).

A graph is read when its data flows along one chain from its one input to its one output through these ops:
Conv, Relu, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean (over H and W), Flatten, Reshape
or Squeeze (to (N, -1)), Gemm or MatMul, BatchNormalization, Mul / Add / Sub / Div by a constant that is one
value per channel, Softmax (at the end), Dropout and Identity (the identity at inference), and Transpose where
it only changes the layout between NCHW and NHWC (tf2onnx puts one in front of a Keras model's NHWC input, and
one before its flatten). Any other op is refused with its name, and so is a graph whose data branches.

Besides the chain, a graph may compute constants: shape arithmetic (Shape, Gather, Slice, Concat, Unsqueeze,
Squeeze, Cast, Identity, Constant; tf2onnx computes a Flatten's target shape so) and casts of weights. Those
nodes are evaluated at load time, with the input's fixed size and a batch of 1, and their results read like
initializers.

Per-channel constants (a batch norm as TensorFlow folds it, a Keras Rescaling or Normalization) are read where
they stand: in front of the first layer they become the model's preprocessing (`extra['preprocessing']`, the
input taken as RGB in 0..255); right after a Conv, Gemm or MatMul (before any activation) they are folded into
its kernel and bias, as a BatchNormalization there is; anywhere else they are an Affine layer (a per-channel
scale and shift), as a BatchNormalization there is.

fbi_ref computes in NHWC: a graph whose input is NCHW (torch.onnx.export) gives a model that takes the same
images as x.transpose(0, 2, 3, 1); a graph whose input is NHWC (tf2onnx) one that takes them as they are.
Kernels are converted once (OIHW -> HWIO, Gemm's B to (in, out)), and a dense layer after a flatten in NCHW
order gets its rows reordered to fbi_ref's (H, W, C) order, so the logits and every activation equal
onnxruntime's. Layers get Keras's VGG names (block1_conv1, ..., block1_pool, flatten, fc1, ..., predictions;
batch_normalization_<n> for an Affine layer, global_average_pooling2d, global_max_pooling2d).

Files are untrusted: the file is read whole only up to a size its weights can need; tensors kept in other files
(external data) are refused, since reading them would read other files; every tensor's declared size is
checked against its data and against MAX_MODEL_BYTES before it is turned into an array, and so is every
constant the graph computes. The preprocessing is the graph's own (above), or the one the file's metadata
names under `fbi_ref.preprocessing` ('caffe', 'torchvision', 'scale255', 'identity'); without either,
load_model uses caffe unless told otherwise.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fbi_ref.errors import ArchitectureError, ModelFileError, UnsupportedLayerError
from fbi_ref.io.keras_files import MAX_MODEL_BYTES
from fbi_ref.io.paths import errors_named, input_file
from fbi_ref.nn.architectures import named_like_keras
from fbi_ref.nn.geometry import same_padding
from fbi_ref.nn.network import (Activation, Affine, Architecture, AveragePool2D, Conv2D, Dense, Flatten,
                                GlobalAveragePool2D, MaxPool2D)
from fbi_ref.nn.preprocessing import from_scale_and_offset

SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                 "ReduceMean (over H, W)", "Flatten", "Reshape", "Squeeze", "Gemm", "MatMul", "BatchNormalization",
                 "Mul", "Add", "Sub", "Div (by per-channel constants)", "Softmax", "Dropout", "Identity", "Transpose",
                 "and shape arithmetic on constants (Shape, Gather, Slice, Concat, Unsqueeze, Cast, Constant)")
METADATA_PREPROCESSING = "fbi_ref.preprocessing"
_MAX_FILE_BYTES = 2 * MAX_MODEL_BYTES + 16 * 2**20  # float64 weights at most, plus the graph's own records
_MAX_NODES = 10_000
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
_MAX_SHAPE_VALUES = 1024  # shape arithmetic works on short integer vectors; anything longer is not a shape


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
        size = os.fstat(file.fileno()).st_size
        if size > _MAX_FILE_BYTES:
            raise ModelFileError(f"{size:,} bytes, more than a model of at most {MAX_MODEL_BYTES:,} bytes of "
                                 f"weights can need (FBI_REF_MAX_MODEL_BYTES)")
        data = file.read(size + 1)  # what the file holds (a buffer of the limit's size would be 4 GiB)
    if len(data) > size:
        raise ModelFileError("the file grew while it was read")
    # From bytes, onnx has no folder to look for external data in: it never opens another file.
    return onnx.load_model_from_string(data)


def _checked(model) -> None:
    """onnx.checker's full check (what onnxruntime would refuse), and ops of the default domain only."""
    import onnx
    try:  # a file of a newer IR than this onnx knows cannot be checked by it: fbi_ref's own checks still apply
        if model.ir_version <= onnx.IR_VERSION:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise ModelFileError(f"onnx.checker refuses it: {first[:300]}") from None
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedLayerError(f"node {node.name!r}: op {node.op_type} of domain {node.domain!r}; fbi_ref "
                                        f"reads the default ONNX domain")


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
    names = [proto.name for proto in protos]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ModelFileError(f"two tensors are named {twice!r} (onnxruntime takes the first, other readers the last)")
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
    tensors: dict  # the constants: initializers, Constant nodes, and what the graph computes from them
    current: str
    layout: str  # 'input' (not yet known), 'nchw', 'nhwc', 'pooled' ((N, C, 1, 1) after a global pool) or 'flat'
    shape: tuple  # (H, W, C) of the feature map; (units,) once flat
    layers: list = field(default_factory=list)
    flat_chw: tuple | None = None  # (C, H, W) when the last flatten was in NCHW order and no dense has followed
    last_op: str = ""
    open: bool = False  # the current tensor is the last layer's output before any activation (foldable into it)
    input_dims: tuple = ()  # the input's dimensions after the batch, as written
    input_hwc: tuple = ()  # the model's input (H, W, C), known once the first node says the input's layout
    pending: list = field(default_factory=list)  # (op, constant, node name) at the input while its layout is open
    scale: np.ndarray | float = 1.0  # the input map so far: x * scale + offset per input channel
    offset: np.ndarray | float = 0.0
    input_ops: list = field(default_factory=list)  # the ops of that map, to name it
    shapes: dict = field(default_factory=dict)  # ONNX shape (batch 1) of every data tensor seen
    computed_bytes: int = 0  # what evaluating constants has allocated
    ended: bool = False  # the final Softmax has been read: nothing but the identity may follow
    sizes: set = field(default_factory=set)  # constants computed from a tensor's size (Shape and what follows)


def onnx_architecture(model, name: str = "onnx_vgg") -> Architecture:
    """A ModelProto's VGG-style graph as an Architecture with Keras's VGG layer names."""
    graph = model.graph
    if len(graph.node) > _MAX_NODES:
        raise ModelFileError(f"{len(graph.node):,} nodes: not a VGG-style graph")
    tensors = _tensors(graph)  # first: refuses external data before anything could look for it
    _checked(model)
    data_input = _data_input(graph, tensors)
    dims = _input_dims(data_input)
    chain = _Chain(tensors, data_input.name, "input", dims, input_dims=dims)
    chain.shapes[data_input.name] = (1, *dims)
    computed = _computing_constants(graph, tensors)
    _check_chain(graph, tensors, computed)
    for index, node in enumerate(graph.node):
        if index in computed:
            _evaluate(chain, node)
        else:
            _step(chain, node)
    outputs = [o.name for o in graph.output]
    if outputs != [chain.current]:
        raise ArchitectureError(f"the graph's outputs {outputs} are not the end of its chain ({chain.current})")
    layers = _named(chain.layers)
    extra = {}
    metadata = {p.key: p.value for p in model.metadata_props}.get(METADATA_PREPROCESSING)
    own = _input_map(chain)
    if own is not None and metadata:
        raise ModelFileError(f"the graph computes its own preprocessing ({' '.join(chain.input_ops)} at the input) "
                             f"and its metadata names another ({metadata!r}); fbi_ref applies one")
    if own is not None or metadata:
        extra["preprocessing"] = own if own is not None else metadata
    if own is not None:
        extra["input_map"] = True  # the graph's own ops: no other preprocessing may replace it
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
    if math.prod(dims[1:]) > MAX_MODEL_BYTES // 4:
        raise ArchitectureError(f"the input {value_info.name!r} declares shape {dims}: too large an image")
    return tuple(dims[1:])


# Ops that compute a constant when their inputs are constants; Shape does from any tensor, whose size is known.
_CONSTANT_OPS = ("Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity", "Constant")


def _computing_constants(graph, tensors: dict) -> set:
    """The indices of the nodes that compute constants: Constant, Shape, and the _CONSTANT_OPS whose inputs are all
    constants (the graph's nodes are in topological order, as ONNX requires)."""
    constant, indices = set(tensors), set()
    for index, node in enumerate(graph.node):
        if node.op_type in ("Constant", "Shape") or (
                node.op_type in _CONSTANT_OPS and all(not name or name in constant for name in node.input)):
            indices.add(index)
            constant.update(node.output)
    return indices


def _check_chain(graph, tensors: dict, computed: set) -> None:
    """Every data tensor feeds one data node at most: the data flows along one chain, without branches (a Shape
    reading a tensor's size is not a second path)."""
    readers = {}
    for index, node in enumerate(graph.node):
        if index in computed:
            continue
        for name in node.input:
            if name and name not in tensors:
                readers.setdefault(name, []).append(node.name or node.op_type)
    branching = [name for name, nodes in readers.items() if len(nodes) > 1]
    if branching:
        nodes = readers[branching[0]]
        raise ArchitectureError(f"tensor {branching[0]!r} feeds {len(nodes)} nodes ({', '.join(nodes[:4])}); "
                                f"fbi_ref reads sequential graphs (one chain of layers)")


def _step(chain: _Chain, node) -> None:
    """Take one node: check it continues the chain, then add or change a layer."""
    if node.op_type not in _OPS:
        raise UnsupportedLayerError(f"ONNX op {node.op_type} (node {node.name!r}) is not supported; fbi_ref reads "
                                    f"VGG-style graphs of {', '.join(SUPPORTED_OPS)}")
    inputs = list(node.input)
    if node.op_type in ("Mul", "Add") and len(inputs) == 2 and inputs[1] == chain.current:
        inputs.reverse()  # commutative: the data may come second
    if not inputs or inputs[0] != chain.current:
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}) does not take the previous layer's output; "
                                f"fbi_ref reads sequential graphs")
    for name in inputs[1:]:
        if name and name not in chain.tensors:
            raise ArchitectureError(f"node {node.name!r} ({node.op_type}): input {name!r} is not a constant")
    for extra in node.output[1:]:
        if extra:
            raise UnsupportedLayerError(f"node {node.name!r} ({node.op_type}): a second output is not supported")
    if chain.ended and node.op_type not in ("Dropout", "Identity"):
        raise UnsupportedLayerError(f"node {node.name!r} ({node.op_type}) after the final Softmax: fbi_ref reads "
                                    f"the Softmax's input as the logits and the Softmax as the graph's end")
    for index, name in enumerate(inputs[1:], 1):  # a size is batch 1 here, not the batch the graph will be given
        if name in chain.sizes and not (node.op_type == "Reshape" and index == 1):
            raise UnsupportedLayerError(f"node {node.name!r} ({node.op_type}) computes with a tensor's size "
                                        f"({name!r}); fbi_ref evaluates sizes only for a Reshape's target shape")
    at_input = node.op_type in (*_ELEMENTWISE, "Dropout", "Identity") and chain.layout == "input"
    if chain.layout == "input" and not at_input:
        _decide_layout(chain, node)
    was = len(chain.layers)
    _OPS[node.op_type](chain, node, inputs)
    chain.current, chain.last_op = node.output[0], node.op_type
    if len(chain.layers) > was:  # a new layer: its output is open for a bias, a scale or a batch norm until an
        last = chain.layers[-1]  # activation or another layer closes it
        chain.open = isinstance(last, (Conv2D, Dense, Affine)) and last.activation == "linear"
    elif node.op_type not in _FOLDING and node.op_type not in ("Dropout", "Identity"):
        chain.open = False
    chain.shapes[chain.current] = _onnx_shape(chain)


def _decide_layout(chain: _Chain, node) -> None:
    """The input's layout, from its first node that is not an input map: a Transpose to NCHW says NHWC (tf2onnx),
    anything else NCHW (torch.onnx). The input map read so far becomes one value per channel."""
    nhwc = node.op_type == "Transpose" and _attr(node, "perm") == _TO_NCHW
    dims = chain.input_dims
    chain.input_hwc = dims if nhwc else _nchw_to_hwc(dims)
    chain.layout, chain.shape = "nhwc" if nhwc else "nchw", chain.input_hwc
    pending, chain.pending = chain.pending, []
    for op, constant, name in pending:
        _map_input(chain, op, _channel_vector(chain, constant, name, op))


def _onnx_shape(chain: _Chain) -> tuple:
    """The current tensor's shape as ONNX has it, with a batch of 1."""
    if chain.layout == "input":
        return (1, *chain.input_dims)
    if chain.layout == "flat":
        return (1, *chain.shape)
    h, w, c = chain.shape
    return {"nchw": (1, c, h, w), "nhwc": (1, h, w, c), "pooled": (1, c, 1, 1)}[chain.layout]


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


def _weight(chain: _Chain, node, index: int, ndim: tuple, what: str, inputs=None) -> np.ndarray | None:
    """A node's constant input `index` as float32, of one of the ranks `ndim` (None when absent)."""
    inputs = list(node.input) if inputs is None else inputs
    if len(inputs) <= index or not inputs[index]:
        return None
    array = chain.tensors[inputs[index]]
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


# --- constants the graph computes -------------------------------------------------------------------------

_CAST_TO = {1: np.float32, 6: np.int32, 7: np.int64, 10: np.float16, 11: np.float64}


def _evaluate(chain: _Chain, node) -> None:
    """A node of _CONSTANT_OPS evaluated with numpy; its output joins the constants."""
    op = node.op_type
    if op == "Constant":
        return  # read with the initializers
    values = [] if op == "Shape" else [chain.tensors[name] if name else None for name in node.input]
    if op not in ("Cast", "Identity", "Shape"):  # shape arithmetic: short integer vectors only (Concat's sum too)
        sizes = [v.size for v in values if v is not None]
        if max(sizes, default=0) > _MAX_SHAPE_VALUES or (op == "Concat" and sum(sizes) > _MAX_SHAPE_VALUES):
            raise UnsupportedLayerError(f"node {node.name!r} ({op}) on constants of {sum(sizes):,} values: fbi_ref "
                                        f"evaluates shape arithmetic only")
    if op == "Shape" or any(name in chain.sizes for name in node.input):
        chain.sizes.update(node.output)
    try:
        result = _CONSTANT_RULES[op](chain, node, values)
    except (IndexError, ValueError, TypeError) as error:  # numpy's AxisError is both of the first two
        raise ArchitectureError(f"node {node.name!r} ({op}): {error}") from None
    result = np.asarray(result)
    chain.computed_bytes += result.nbytes
    if chain.computed_bytes > MAX_MODEL_BYTES:
        raise ModelFileError(f"the constants the graph computes exceed {MAX_MODEL_BYTES:,} bytes")
    chain.tensors[node.output[0]] = result


def _shape_of(chain, node, values):
    """Shape: the ONNX shape of a data tensor (batch 1) or of a constant, between its start and end."""
    name = node.input[0]
    shape = chain.shapes.get(name) if name not in chain.tensors else chain.tensors[name].shape
    if shape is None:
        raise ArchitectureError(f"node {node.name!r} (Shape) reads {name!r}, which is not on the chain")
    return np.array(shape[slice(_attr(node, "start", 0), _attr(node, "end"))], np.int64)


def _axes(node, values, index):
    """The axes of Squeeze / Unsqueeze / ReduceMean: an input from opset 13 (18 for ReduceMean), else an attribute."""
    if len(values) > index and values[index] is not None:
        if values[index].ndim != 1 or values[index].dtype.kind not in "iu":
            raise ArchitectureError(f"node {node.name!r} ({node.op_type}): axes of shape {values[index].shape} and "
                                    f"dtype {values[index].dtype}, not a vector of integers")
        return [int(a) for a in values[index]]
    return _attr(node, "axes")


def _slice(chain, node, values):
    """Slice(data, starts, ends, axes, steps)."""
    if any(v is not None and v.ndim != 1 for v in values[1:]):
        raise ValueError("starts, ends, axes and steps must be vectors")
    data, starts, ends = values[0], values[1], values[2]
    axes = values[3].ravel() if len(values) > 3 and values[3] is not None else range(len(starts))
    steps = values[4].ravel() if len(values) > 4 and values[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis, step = int(axis), int(step)
        dim = data.shape[axis]
        start, end = (int(v) + dim if v < 0 else int(v) for v in (max(start, -2**62), min(max(end, -2**62), 2**62)))
        if step > 0:  # ONNX clamps start and end to [0, dim] for a positive step, to [0, dim-1] and [-1, dim-1]
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)  # for a negative one
        elif step < 0:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        else:
            raise ValueError("a step of 0")
        data = np.take(data, np.arange(start, end, step, dtype=np.int64), axis=axis)
    return data


def _cast(chain, node, values):
    """Cast to float16/32/64 or int32/64."""
    to = _attr(node, "to")
    if to not in _CAST_TO:
        raise UnsupportedLayerError(f"node {node.name!r}: Cast to ONNX type {to}")
    return values[0].astype(_CAST_TO[to])


_CONSTANT_RULES = {
    "Shape": _shape_of,
    "Gather": lambda chain, node, v: np.take(v[0], v[1].astype(np.int64), axis=_attr(node, "axis", 0)),
    "Slice": _slice,
    "Concat": lambda chain, node, v: np.concatenate([a for a in v if a is not None], axis=_attr(node, "axis")),
    "Unsqueeze": lambda chain, node, v: np.expand_dims(v[0], tuple(_axes(node, v, 1))),
    "Squeeze": lambda chain, node, v: np.squeeze(v[0], None if _axes(node, v, 1) is None else tuple(_axes(node, v, 1))),
    "Cast": _cast,
    "Identity": lambda chain, node, v: v[0],
}


# --- per-channel constants: the input map, a folded scale or bias, or an Affine layer ----------------------

_ELEMENTWISE = ("Mul", "Add", "Sub", "Div")
_FOLDING = ("Conv", "Gemm", "MatMul", "BatchNormalization") + _ELEMENTWISE  # ops whose output stays foldable


def _channel_vector(chain: _Chain, constant: np.ndarray, name: str, op: str) -> np.ndarray:
    """A constant that ONNX broadcasts to the current tensor as one value per channel, as (C,) float64;
    UnsupportedLayerError for anything that varies along another axis or would enlarge the tensor."""
    shape = _onnx_shape(chain)
    axis = {"nhwc": 3, "flat": 1}.get(chain.layout, 1)
    padded = constant.reshape((1,) * (len(shape) - constant.ndim) + constant.shape)
    if constant.ndim > len(shape) or any(n != 1 and (i != axis or n != shape[axis])
                                         for i, n in enumerate(padded.shape)):
        raise UnsupportedLayerError(f"node {name!r} ({op}): a constant of shape {constant.shape} on the "
                                    f"{chain.layout.upper()} tensor of shape {shape} is not one value per channel "
                                    f"(ONNX broadcasts from the right)")
    values = np.moveaxis(padded, axis, -1).reshape(-1).astype(np.float64)
    return np.broadcast_to(values, (shape[axis],)).copy()


def _elementwise(chain: _Chain, node, inputs) -> None:
    """Mul, Add, Sub or Div by a per-channel constant: the input map (in front of every layer), folded into the
    layer whose output this is (before its activation), or an Affine layer."""
    op = node.op_type
    constant = _weight(chain, node, 1, range(0, 5), "the constant", inputs)
    if op == "Div" and not constant.all():
        raise ModelFileError(f"node {node.name!r}: Div by zero")
    if chain.layout == "input":  # the channel axis is known once the first layer says the input's layout
        chain.pending.append((op, constant, node.name))
        chain.input_ops.append(op)
        return
    vector = _in_our_order(chain, _channel_vector(chain, constant, node.name, op))
    if not chain.layers:
        chain.input_ops.append(op)
        _map_input(chain, op, vector)
        return
    scale, shift = _as_affine(op, vector)
    if not chain.open:
        channels = chain.shape[-1]
        chain.layers.append(Affine("", np.ones(channels, np.float32), np.zeros(channels, np.float32)))
    last = chain.layers[-1]
    kernel = np.asarray(last.kernel, np.float64) * scale  # scales each output unit (the last axis)
    bias = np.asarray(last.bias, np.float64) * scale + shift
    chain.layers[-1] = replace(last, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))


def _in_our_order(chain: _Chain, vector: np.ndarray) -> np.ndarray:
    """A per-unit vector of a tensor flattened in NCHW order, (C, H, W), put in fbi_ref's (H, W, C) order."""
    if chain.layout != "flat" or chain.flat_chw is None:
        return vector
    c, h, w = chain.flat_chw
    return vector.reshape(c, h, w).transpose(1, 2, 0).ravel()


def _as_affine(op: str, vector: np.ndarray) -> tuple:
    """(scale, shift) of y = x op vector."""
    if op in ("Mul", "Div"):
        return (vector if op == "Mul" else 1 / vector), 0.0
    return 1.0, (vector if op == "Add" else -vector)


def _map_input(chain: _Chain, op: str, vector: np.ndarray) -> None:
    """The input map x * scale + offset followed by `op vector`."""
    scale, shift = _as_affine(op, vector)
    chain.scale, chain.offset = chain.scale * scale, chain.offset * scale + shift


def _input_map(chain: _Chain):
    """The graph's own preprocessing (a Preprocessing), or None when it has none."""
    if not chain.input_ops:
        return None
    if chain.input_hwc[2] != 3:
        raise UnsupportedLayerError(f"{' '.join(chain.input_ops)} at the input of {chain.input_hwc[2]} channels: "
                                    f"fbi_ref reads an input map on RGB images only")
    return from_scale_and_offset(chain.scale, chain.offset, "ONNX " + " ".join(chain.input_ops) + " at the input")


# --- one op each ------------------------------------------------------------------------------------------

def _transpose(chain: _Chain, node, inputs) -> None:
    """A layout change between NCHW and NHWC (free in fbi_ref, which is NHWC throughout)."""
    perm = _attr(node, "perm")
    if chain.layout == "nchw" and perm == _TO_NHWC:
        chain.layout = "nhwc"
    elif chain.layout == "nhwc" and perm == _TO_NCHW:
        chain.layout = "nchw"
    else:
        raise UnsupportedLayerError(f"node {node.name!r}: Transpose with perm {perm} on a {chain.layout.upper()} "
                                    f"tensor is not a layout change fbi_ref follows")


def _conv(chain: _Chain, node, inputs) -> None:
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
    """('same' | 'valid', (Ho, Wo)) of a Conv or pool; UnsupportedLayerError for any other padding, and for
    window attributes onnxruntime refuses (a kernel_shape other than the weight's, strides or pads of the wrong
    length, auto_pad beside explicit pads)."""
    given = _attr(node, "kernel_shape")
    pads_given = _attr(node, "pads")
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): auto_pad {_attr(node, 'auto_pad')!r} is not an "
                                f"ONNX padding")
    if (given is not None and tuple(given) != tuple(kernel)) or len(strides) != 2 or min(strides) < 1 or \
            (pads_given is not None and (len(pads_given) != 4 or min(pads_given) < 0)) or \
            (pads_given is not None and _attr(node, "auto_pad", "NOTSET") != "NOTSET"):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): kernel_shape {given}, strides {list(strides)}, "
                                f"pads {pads_given}, auto_pad {_attr(node, 'auto_pad', 'NOTSET')} do not describe "
                                f"a {list(kernel)} window (onnxruntime refuses them too)")
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


def _relu(chain: _Chain, node, inputs) -> None:
    """Fused into the conv, dense or affine layer whose output this is; a stand-alone Activation otherwise."""
    if chain.open:
        chain.layers[-1] = replace(chain.layers[-1], activation="relu")
    else:
        chain.layers.append(Activation("", "relu"))


def _pool_window(chain: _Chain, node) -> tuple:
    """A MaxPool's or AveragePool's (kernel, strides, padding, output (H, W, C)): no ceil mode or dilation."""
    _need(chain, node, "nchw")
    kernel = tuple(_attr(node, "kernel_shape", []))
    if (len(kernel) != 2 or min(kernel) < 1 or _attr(node, "ceil_mode", 0)
            or set(_attr(node, "dilations", [1, 1])) != {1} or _attr(node, "storage_order", 0)):
        raise UnsupportedLayerError(f"node {node.name!r}: {node.op_type} with kernel {list(kernel)}, ceil_mode, "
                                    f"dilations or storage_order; fbi_ref reads plain 2-D pools")
    strides = tuple(_attr(node, "strides", [1, 1]))
    h, w, c = chain.shape
    padding, (ho, wo) = _padding(node, (h, w), kernel, strides)
    return kernel, strides, padding, (ho, wo, c)


def _maxpool(chain: _Chain, node, inputs) -> None:
    """MaxPool (no ceil mode, dilation, storage order or indices) -> MaxPool2D."""
    kernel, strides, padding, chain.shape = _pool_window(chain, node)
    chain.layers.append(MaxPool2D("", kernel, strides, padding))


def _average_pool(chain: _Chain, node, inputs) -> None:
    """AveragePool -> AveragePool2D, padding not counted (count_include_pad=0, as Keras's 'same'). A 1 x 1 one
    with stride 1 is the identity (torch.onnx writes torchvision's AdaptiveAvgPool2d((7, 7)) so on a 7 x 7
    map) and adds no layer."""
    kernel, strides, padding, shape = _pool_window(chain, node)
    if padding == "same" and _attr(node, "count_include_pad", 0):
        raise UnsupportedLayerError(f"node {node.name!r}: AveragePool with count_include_pad=1 and padding; "
                                    f"fbi_ref's average pools do not count padding (Keras's 'same')")
    if kernel != (1, 1) or strides != (1, 1):
        chain.layers.append(AveragePool2D("", kernel, strides, padding))
    chain.shape = shape


def _global_pool(chain: _Chain, node, inputs) -> None:
    """GlobalAveragePool -> GlobalAveragePool2D; GlobalMaxPool -> a MaxPool2D whose window is the whole map
    (then a Flatten where the graph squeezes it). The tensor is (N, C, 1, 1) until it is squeezed."""
    _need(chain, node, "nchw")
    h, w, c = chain.shape
    if node.op_type == "GlobalAveragePool":
        chain.layers.append(GlobalAveragePool2D(""))
    else:
        chain.layers.append(MaxPool2D("global_max_pooling2d_window", (h, w), (h, w), "valid"))
    chain.layout, chain.shape = "pooled", (1, 1, c)


def _reduce_mean(chain: _Chain, node, inputs) -> None:
    """ReduceMean over H and W (axes 2, 3 of NCHW or 1, 2 of NHWC) -> GlobalAveragePool2D."""
    rank_axes = {"nchw": {2, 3}, "nhwc": {1, 2}}.get(chain.layout)
    axes = _axes(node, [chain.tensors.get(name) for name in inputs], 1)
    if rank_axes is None or axes is None or {a % 4 for a in axes} != rank_axes:
        raise UnsupportedLayerError(f"node {node.name!r}: ReduceMean over axes {axes} of a "
                                    f"{chain.layout.upper()} tensor; fbi_ref reads the mean over H and W")
    keep = _attr(node, "keepdims", 1)
    if keep and chain.layout == "nhwc":
        raise UnsupportedLayerError(f"node {node.name!r}: ReduceMean keeping the dimensions of an NHWC tensor; "
                                    f"fbi_ref reads it on NCHW, or without keepdims")
    chain.layers.append(GlobalAveragePool2D(""))
    c = chain.shape[2]
    if keep:
        chain.layout, chain.shape = "pooled", (1, 1, c)
    else:
        chain.layout, chain.shape = "flat", (c,)


def _flatten(chain: _Chain, node, inputs) -> None:
    """Flatten at axis 1, Reshape to (N, -1) or Squeeze of H and W: a feature map's values in the order of its
    layout, or a globally pooled map's channels."""
    if chain.layout not in ("nchw", "nhwc", "pooled"):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): the tensor is already flat")
    h, w, c = chain.shape
    if node.op_type == "Flatten" and _attr(node, "axis", 1) != 1:
        raise UnsupportedLayerError(f"node {node.name!r}: Flatten at axis {_attr(node, 'axis')}, not 1")
    if node.op_type == "Reshape":
        target = chain.tensors[inputs[1]]
        if target.ndim != 1 or target.dtype.kind not in "iu":
            raise ArchitectureError(f"node {node.name!r}: Reshape's shape has shape {target.shape} and dtype "
                                    f"{target.dtype}, not a vector of integers")
        shape = [int(v) for v in target]
        if len(shape) != 2 or shape[1] not in (-1, h * w * c) or shape[0] not in (-1, 0, 1) or \
                _attr(node, "allowzero", 0):
            raise UnsupportedLayerError(f"node {node.name!r}: Reshape to {shape}; fbi_ref reads a flatten (N, -1)")
    if node.op_type == "Squeeze":
        axes = _axes(node, [chain.tensors.get(name) for name in inputs], 1)
        if chain.layout != "pooled" or (axes is not None and {a % 4 for a in axes} != {2, 3}):
            raise UnsupportedLayerError(f"node {node.name!r}: Squeeze of axes {axes} of a {chain.layout.upper()} "
                                        f"tensor; fbi_ref reads it only after a global pool")
    pooled = chain.layout == "pooled"
    chain.flat_chw = (c, h, w) if chain.layout == "nchw" and h * w > 1 else None
    if not (pooled and isinstance(chain.layers[-1], GlobalAveragePool2D)):  # that one is flat already
        chain.layers.append(Flatten("global_max_pooling2d" if pooled and _global_max(chain) else ""))
    chain.layout, chain.shape = "flat", (h * w * c,)


def _global_max(chain: _Chain) -> bool:
    """Whether the last pool is a global max pool."""
    pools = [layer for layer in chain.layers if isinstance(layer, (MaxPool2D, GlobalAveragePool2D))]
    return bool(pools) and pools[-1].name == "global_max_pooling2d_window"


def _dense(chain: _Chain, node, inputs) -> None:
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
    """A Gemm bias of shape (), (1,), (size,) or (1, size) as (size,) float32 (ONNX broadcasts C to (N, size))."""
    if array.shape not in ((), (1,), (size,), (1, size), (1, 1)):
        raise ArchitectureError(f"node {node.name!r} ({node.op_type}): a bias of shape {array.shape} for {size} "
                                f"units")
    return np.ascontiguousarray(np.broadcast_to(array.ravel(), (size,)), dtype=np.float32)


def _batch_norm(chain: _Chain, node, inputs) -> None:
    """Eval-mode BatchNormalization: folded into the Conv or Gemm whose output this is (before its activation),
    else an Affine layer."""
    if _attr(node, "training_mode", 0):
        raise UnsupportedLayerError(f"node {node.name!r}: BatchNormalization in training mode")
    channels = chain.shape[-1]
    gamma, beta, mean, var = (_weight(chain, node, i, (1,), "a statistic").astype(np.float64) for i in range(1, 5))
    if any(v.shape == (channels,) for v in (gamma, beta, mean, var)):
        gamma, beta, mean, var = (_in_our_order(chain, v) for v in (gamma, beta, mean, var))
    if any(v.shape != (channels,) for v in (gamma, beta, mean, var)) or (var < 0).any():
        raise ArchitectureError(f"node {node.name!r}: BatchNormalization statistics of shapes "
                                f"{[v.shape for v in (gamma, beta, mean, var)]} (or a negative variance) for "
                                f"{channels} channels")
    scale = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    if not chain.open:
        chain.layers.append(Affine("", np.ones(channels, np.float32), np.zeros(channels, np.float32)))
        chain.open = True
    last = chain.layers[-1]
    kernel = np.asarray(last.kernel, np.float64) * scale  # scales each output unit (the last axis)
    bias = (np.asarray(last.bias, np.float64) - mean) * scale + beta
    chain.layers[-1] = replace(last, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))


def _softmax(chain: _Chain, node, inputs) -> None:
    """The final softmax over the classes: the last dense layer's activation."""
    last = chain.layers[-1] if chain.layers else None
    if chain.layout != "flat" or not isinstance(last, Dense) or not chain.open \
            or _attr(node, "axis", -1) not in (-1, 1):
        raise UnsupportedLayerError(f"node {node.name!r}: Softmax is supported only over the classes, right after "
                                    f"the last Gemm or MatMul")
    chain.layers[-1] = replace(last, activation="softmax")
    chain.ended = True


def _identity(chain: _Chain, node, inputs) -> None:
    """Dropout and Identity: the identity at inference."""


_OPS = {"Conv": _conv, "Relu": _relu, "MaxPool": _maxpool, "AveragePool": _average_pool,
        "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "ReduceMean": _reduce_mean,
        "Flatten": _flatten, "Reshape": _flatten, "Squeeze": _flatten, "Gemm": _dense, "MatMul": _dense,
        "BatchNormalization": _batch_norm, "Mul": _elementwise, "Add": _elementwise, "Sub": _elementwise,
        "Div": _elementwise, "Softmax": _softmax, "Dropout": _identity, "Identity": _identity,
        "Transpose": _transpose}


def _named(layers: list) -> list:
    """The layers with Keras's VGG names; the last dense layer is 'predictions', with a softmax."""
    named = named_like_keras(layers)  # each layer was made without a name
    denses = [i for i, layer in enumerate(named) if isinstance(layer, Dense)]
    if not any(isinstance(layer, Conv2D) for layer in named) or not denses:
        raise ArchitectureError("the graph has no Conv or no Gemm/MatMul: not a VGG-style classifier")
    if named[denses[-1]].activation == "linear":  # the logits stay this layer's pre-activation
        named[denses[-1]] = replace(named[denses[-1]], activation="softmax")
    return named
