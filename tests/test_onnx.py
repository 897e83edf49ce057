"""ONNX import of VGG-style graphs, against onnxruntime: a graph written with onnx.helper (NHWC input and the
Transpose tf2onnx puts in front, MatMul + Add, BatchNormalization, Softmax), and torchvision-style VGGs exported
by torch.onnx.export (when torch is installed). Bad files fail with one typed line naming the problem."""
import copy
import subprocess
import sys

import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import ArchitectureError, ModelFileError, UnsupportedLayerError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402 (needs onnx)

RTOL = 1e-5


def run_ort(path, x):
    """onnxruntime's outputs for one input array (threads limited: the machine has 2 cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def scaled_error(ours, theirs):
    """max |ours - theirs| / max |theirs|."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def tf2onnx_like(seed=0, batch_norm=True, softmax=True, size=16):
    """A Keras-style small VGG as tf2onnx writes it: NHWC input, Transpose to NCHW, Conv (+ BatchNormalization)
    + Relu, MaxPool, Transpose back to NHWC, Reshape to (N, -1), MatMul + Add + Relu, MatMul + Add, Softmax."""
    rng = np.random.default_rng(seed)
    init = []

    def const(name, array):
        init.append(numpy_helper.from_array(np.asarray(array, np.float32) if np.asarray(array).dtype.kind == "f"
                                            else np.asarray(array), name))
        return name
    nodes = [helper.make_node("Transpose", ["input"], ["t0"], perm=[0, 3, 1, 2], name="to_nchw")]
    current, channels = "t0", 3
    for i, width in enumerate((4, 6)):
        w = const(f"w{i}", rng.standard_normal((width, channels, 3, 3)) * 0.4)
        b = const(f"b{i}", rng.standard_normal(width) * 0.1)
        nodes.append(helper.make_node("Conv", [current, w, b], [f"c{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], name=f"conv{i}"))
        current = f"c{i}"
        if batch_norm:
            stats = [const(f"bn{i}_{k}", v) for k, v in (("s", rng.uniform(0.5, 1.5, width)),
                                                          ("b", rng.uniform(-.5, .5, width)),
                                                          ("m", rng.uniform(-.5, .5, width)),
                                                          ("v", rng.uniform(.5, 2, width)))]
            nodes.append(helper.make_node("BatchNormalization", [current, *stats], [f"n{i}"], epsilon=1e-3,
                                          name=f"bn{i}"))
            current = f"n{i}"
        nodes += [helper.make_node("Relu", [current], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2],
                                   name=f"pool{i}")]
        current, channels = f"p{i}", width
    side = size // 4
    nodes += [helper.make_node("Transpose", [current], ["t1"], perm=[0, 2, 3, 1], name="to_nhwc"),
              helper.make_node("Reshape", ["t1", const("shape", np.array([-1, side * side * channels], np.int64))],
                               ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", const("fc1_w", rng.standard_normal((side * side * channels, 8)) * .3)],
                               ["m1"], name="fc1"),
              helper.make_node("Add", ["m1", const("fc1_b", rng.standard_normal(8) * 0.1)], ["a1"], name="fc1_bias"),
              helper.make_node("Relu", ["a1"], ["r_fc1"], name="fc1_relu"),
              helper.make_node("Dropout", ["r_fc1"], ["d1"], name="dropout"),
              helper.make_node("MatMul", ["d1", const("fc2_w", rng.standard_normal((8, 5)))], ["m2"], name="fc2"),
              helper.make_node("Add", ["m2", const("fc2_b", rng.standard_normal(5) * 0.1)], ["logits"], name="fc2_b")]
    output = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"))
        output = "probs"
    graph = helper.make_graph(nodes, "tf2onnx_like",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def write(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_helper_graph_equals_onnxruntime(tmp_path, batch_norm):
    path = write(tmp_path, tf2onnx_like(batch_norm=batch_norm))
    model = fbi_ref.load_model(path)
    assert [layer.name for layer in model.layers] == ["block1_conv1", "block1_pool", "block2_conv1", "block2_pool",
                                                       "flatten", "fc1", "predictions"]
    assert model.input_shape == (16, 16, 3)  # NHWC input: the model takes it as it is
    x = np.random.default_rng(1).standard_normal((3, 16, 16, 3)).astype(np.float32)
    probs = run_ort(path, x)
    assert scaled_error(model.forward(x).probs, probs) < RTOL
    fbi_ref.explain(model, x, "fbi")


def test_helper_graph_logits_without_softmax(tmp_path):
    path = write(tmp_path, tf2onnx_like(softmax=False))
    model = fbi_ref.load_model(path)
    x = np.random.default_rng(2).standard_normal((2, 16, 16, 3)).astype(np.float32) * 50
    assert scaled_error(model.forward(x).logits, run_ort(path, x)) < RTOL


def test_preprocessing_from_metadata(tmp_path):
    model = tf2onnx_like()
    helper.set_model_props(model, {"fbi_ref.preprocessing": "torchvision"})
    assert fbi_ref.load_model(write(tmp_path, model)).preprocessing.name == "torchvision"
    assert fbi_ref.load_model(write(tmp_path, tf2onnx_like(), "b.onnx")).preprocessing.name == "caffe"


# --- graphs exported by torch ------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg11", "vgg11_bn"])
def test_torch_exported_vgg_equals_onnxruntime_and_torch(tmp_path, batch_norm):
    torch = pytest.importorskip("torch")
    from tests.vgg_torch import CFGS, VGG, activations
    net = VGG(CFGS["vgg11"], batch_norm, width=8, fc=64, classes=10, seed=3)
    path = tmp_path / "vgg.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    model = fbi_ref.load_model(path, preprocessing="torchvision")
    x = np.random.default_rng(4).standard_normal((2, 224, 224, 3)).astype(np.float32)  # NHWC for fbi_ref
    fp = model.forward(x)
    assert scaled_error(fp.logits, run_ort(path, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))) < RTOL
    with torch.no_grad():
        logits, acts = activations(net, x)
    for name, theirs in acts.items():
        theirs = theirs.numpy()
        assert scaled_error(fp.outputs[name], theirs.transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs) < RTOL
    fbi_ref.explain(model, x, "fbi")


# --- bad files --------------------------------------------------------------------------------------------

def one_line_error(path, error, match):
    with pytest.raises(error, match=match) as info:
        fbi_ref.load_model(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)


def test_an_unsupported_op_is_named(tmp_path):
    model = tf2onnx_like()
    model.graph.node[3].op_type = "LeakyRelu"  # conv0, bn0, relu0 -> LeakyRelu
    one_line_error(write(tmp_path, model), UnsupportedLayerError, "ONNX op LeakyRelu .*relu0")


def test_external_data_is_refused(tmp_path):
    model = tf2onnx_like()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    one_line_error(write(tmp_path, model), ModelFileError, "keeps its data in another file")


def test_declared_size_must_match_the_data(tmp_path):
    model = tf2onnx_like()
    model.graph.initializer[0].dims[0] = 10**6
    one_line_error(write(tmp_path, model), ModelFileError, "declares .* values")


def test_truncated_file(tmp_path):
    data = write(tmp_path, tf2onnx_like()).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.onnx", ModelFileError, "not a readable ONNX file")


def test_a_branching_graph_is_refused(tmp_path):
    model = tf2onnx_like(batch_norm=False)
    model.graph.node[4].input[0] = "c0"  # conv1 reads conv0's output, which relu0 reads too
    one_line_error(write(tmp_path, model), ArchitectureError, "feeds 2 nodes")


def test_a_dynamic_image_size_is_refused(tmp_path):
    model = tf2onnx_like()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "H"
    one_line_error(write(tmp_path, model), ArchitectureError, "fixed H, W, C")


@pytest.mark.parametrize("shape", [(4,), (1, 4)])
def test_an_add_after_a_conv_that_onnx_would_broadcast_along_width_is_refused(tmp_path, shape):
    """ONNX broadcasts from the right: after a Conv (N, C, H, W) a (C,) constant is added along W, not per
    channel; reading it as a bias would give other numbers than onnxruntime (the review measured 3.84)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    kernel = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "k")
    bias = numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "b")
    dense = numpy_helper.from_array(rng.standard_normal((64, 2)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Add", ["c", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="dense")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [kernel, bias, dense])
    path = write(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    one_line_error(path, UnsupportedLayerError, "is not one value per channel")


# --- hardening round 2 (issue 24): what onnxruntime refuses or reads otherwise ----------------------------

def set_attribute(node, name, value):
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))


def first(model, op):
    return next(n for n in model.graph.node if n.op_type == op)


def foreign_relu(model):
    first(model, "Relu").domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def gemm_bias_5_by_1(model):
    """The last MatMul + Add as a Gemm whose bias has shape (5, 1), which ONNX broadcasts to (5, 5)."""
    graph = model.graph
    matmul = [n for n in graph.node if n.op_type == "MatMul"][-1]
    add = next(n for n in graph.node if n.op_type == "Add" and n.input[0] == matmul.output[0])
    bias = next(t for t in graph.initializer if t.name == add.input[1])
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).reshape(5, 1), bias.name))
    matmul.op_type = "Gemm"
    matmul.input.append(bias.name)
    add.op_type = "Identity"
    del add.input[1:]


ONNXRUNTIME_REFUSES = {  # edit, error, what the message says
    "a Relu of a foreign domain": (foreign_relu, UnsupportedLayerError, "of domain 'com.example'"),
    "a kernel_shape other than the weight's": (lambda m: set_attribute(first(m, "Conv"), "kernel_shape", [5, 5]),
                                               ArchitectureError, r"kernel_shape \[5, 5\]"),
    "auto_pad=VALID beside pads": (lambda m: set_attribute(first(m, "Conv"), "auto_pad", "VALID"),
                                   ArchitectureError, "auto_pad VALID"),
    "three strides": (lambda m: set_attribute(first(m, "Conv"), "strides", [1, 1, 1]), ModelFileError,
                      "onnx.checker refuses it"),
    "a 0 x 0 pool": (lambda m: set_attribute(first(m, "MaxPool"), "kernel_shape", [0, 0]), ModelFileError,
                     "onnx.checker refuses it"),
    "Reshape with allowzero (opset 13)": (lambda m: set_attribute(first(m, "Reshape"), "allowzero", 1),
                                          ModelFileError, "onnx.checker refuses it"),
    "a Gemm bias of shape (5, 1)": (gemm_bias_5_by_1, ArchitectureError, r"a bias of shape \(5, 1\)"),
}


@pytest.mark.parametrize("case", list(ONNXRUNTIME_REFUSES))
def test_a_graph_onnxruntime_refuses_is_refused(tmp_path, case):
    edit, error, says = ONNXRUNTIME_REFUSES[case]
    model = tf2onnx_like(batch_norm=False)
    edit(model)
    path = write(tmp_path, model)
    with pytest.raises(Exception):  # the premise: onnxruntime will not run it
        run_ort(path, np.zeros((1, 16, 16, 3), np.float32))
    one_line_error(path, error, says)


def test_two_initializers_with_one_name_are_refused(tmp_path):
    """onnxruntime takes the first, fbi_ref took the last (logits 101 % off)."""
    model = tf2onnx_like(batch_norm=False)
    twin = copy.deepcopy(model.graph.initializer[0])
    twin.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(twin) * 3, twin.name))
    model.graph.initializer.append(twin)
    one_line_error(write(tmp_path, model), ModelFileError, f"two tensors are named '{twin.name}'")


def test_the_logits_are_the_input_of_the_first_softmax(tmp_path):
    """Gemm -> Softmax -> Relu: the Relu's input is already the probabilities (read as logits before the fix:
    p = 0.39 where the model's is 0.965)."""
    model = tf2onnx_like(batch_norm=False)
    graph = model.graph
    softmax = first(model, "Softmax")
    softmax.output[0] = "inner_probs"
    graph.node.append(helper.make_node("Relu", ["inner_probs"], [graph.output[0].name], name="relu_after"))
    one_line_error(write(tmp_path, model), UnsupportedLayerError, "'relu_after' .* after the final Softmax")


def test_a_small_onnx_file_loads_under_a_4_gib_address_space_limit(tmp_path):
    """The reader read into a buffer of the size limit (4 GiB) up front: every ONNX file failed with MemoryError
    under `ulimit -v 4194304`. It reads what the file holds."""
    resource = pytest.importorskip("resource")
    path = write(tmp_path, tf2onnx_like())
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({4 * 2**30}, {4 * 2**30})); "
            f"import fbi_ref; print(len(fbi_ref.load_model({str(path)!r}).layers))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_file_of_a_newer_ir_than_the_installed_onnx_is_still_read(tmp_path):
    """onnx.checker cannot check an IR newer than its own (an export from a newer torch read with an older onnx);
    fbi_ref's own checks still apply and the model is read (a review found it refused)."""
    model = tf2onnx_like()
    model.ir_version = onnx.IR_VERSION + 1
    path = write(tmp_path, model)
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype(np.float32)
    model.ir_version = onnx.IR_VERSION
    reference = write(tmp_path, model, "current.onnx")
    assert scaled_error(fbi_ref.load_model(path).forward(x).probs, run_ort(reference, x)) < RTOL
