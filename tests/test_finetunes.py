"""Fine-tunes as Keras writes them (tests/fixtures/finetunes, made by Keras 3, tf2onnx and torch.onnx with
generate.py): fbi_ref reads every format and computes what Keras and onnxruntime computed, layer by layer;
every method runs on every file. Graphs edited from the real exports check what the exports lack (weights
through Cast, ReduceMean) and what must be refused (a real branch, a map that is not per channel)."""
import json
from pathlib import Path

import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import ArchitectureError, ModelFileError, UnsupportedLayerError
from fbi_ref.io.images import preprocess
from fbi_ref.io.keras_files import read_keras_file
from fbi_ref.methods.catalog import METHODS
from fbi_ref.nn.network import Activation, Affine, AveragePool2D, Conv2D, Dropout, GlobalAveragePool2D, MaxPool2D

from .cli_helpers import assert_one_line_exit_2, cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "finetunes"
MODELS = ("ft_gap", "ft_flatten", "ft_pools", "ft_sequential_flatten")
KERAS_FORMATS = (".keras", ".h5", ".weights.h5")
# ft_flatten has no Rescaling: Keras fed it the raw RGB values, so its preprocessing is the identity
PREPROCESSING = {"ft_flatten": "identity"}
TOLERANCE = 1e-5  # of each array's largest magnitude: float32 sums in another order, BN folded in float64


def scaled_error(ours, theirs):
    """max |ours - theirs| / max |theirs|."""
    return float(np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max())


def keras_outputs(name):
    return dict(np.load(FIXTURES / f"{name}.npz"))


@pytest.mark.parametrize("suffix", KERAS_FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_a_keras_finetune_computes_what_keras_computed_at_every_layer(name, suffix):
    ref = keras_outputs(name)
    # a weights-only file comes with its architecture: the model config model.to_json() wrote
    architecture = FIXTURES / f"{name}.json" if suffix == ".weights.h5" else None
    arch = read_keras_file(FIXTURES / f"{name}{suffix}", architecture)
    model = fbi_ref.load_model(FIXTURES / f"{name}{suffix}", architecture, preprocessing=PREPROCESSING.get(name))
    fp = model.forward(preprocess(ref["x_raw"], model.preprocessing))
    assert scaled_error(fp.logits, ref["logits"]) < TOLERANCE
    folded = arch.extra["folded"]  # conv -> the batch norm folded into it, whose output it computes
    input_maps = [k for k in ("act/rescaling", "act/normalization") if k in ref]  # now the preprocessing
    for key in input_maps:
        assert scaled_error(fp.x, ref[key]) < TOLERANCE, key
    compared = len(input_maps)
    for layer in model.layers:
        key = "act/" + folded.get(layer.name, layer.name)
        if key in ref:
            assert scaled_error(fp.outputs[layer.name], ref[key]) < TOLERANCE, layer.name
            compared += 1
    assert compared >= len([k for k in ref if k.startswith("act/")]) - len(folded)


def test_the_batch_norm_after_a_conv_is_folded_and_the_others_are_affine_layers():
    arch = read_keras_file(FIXTURES / "ft_flatten.keras")
    assert arch.extra["folded"] == {"head_conv": "head_conv_bn"}
    kinds = {layer.name: type(layer).__name__ for layer in arch.layers}
    assert "head_conv_bn" not in kinds and kinds["fc1_bn"] == "Affine"


def test_rescaling_and_normalization_become_the_models_preprocessing():
    gap = fbi_ref.load_model(FIXTURES / "ft_gap.keras")
    np.testing.assert_allclose(gap.preprocessing.mean, (127.5,) * 3)
    np.testing.assert_allclose(gap.preprocessing.std, (127.5,) * 3)
    pools = fbi_ref.load_model(FIXTURES / "ft_pools.keras")
    np.testing.assert_allclose(pools.preprocessing.mean, (120.0, 110.0, 100.0))
    np.testing.assert_allclose(pools.preprocessing.std, np.sqrt([3600.0, 3000.0, 2500.0]))


FILES = [f"{name}{suffix}" for name in MODELS for suffix in (*KERAS_FORMATS, ".tf2onnx.onnx")] + ["ft_gap.torch.onnx"]


def load(file):
    """The model in one fixture file (a weights-only file with its architecture)."""
    name = file.split(".")[0]
    architecture = FIXTURES / f"{name}.json" if file.endswith(".weights.h5") else None
    preprocessing = "identity" if file == "ft_gap.torch.onnx" else PREPROCESSING.get(name)
    return fbi_ref.load_model(FIXTURES / file, architecture, preprocessing=preprocessing)


def model_input(file, model):
    """The fixtures' images as that file's model takes them (the torch export: x_raw / 127.5 - 1, NCHW given as
    NHWC, since fbi_ref computes in NHWC)."""
    x_raw = keras_outputs(file.split(".")[0])["x_raw"]
    if file == "ft_gap.torch.onnx":
        return (x_raw / 127.5 - 1).astype(np.float32)
    return preprocess(x_raw, model.preprocessing)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("file", FILES)
def test_every_method_explains_every_finetune_file(file, method):
    model = load(file)
    options = {"steps": 4} if method == "integrated_gradients" else {"samples": 2} if method == "smoothgrad" else {}
    x = model_input(file, model)[:2]
    e = fbi_ref.explain(model, x, method, record_layers=method == "lrp_zplus", **options)
    assert e.attribution.shape == (2, 32, 32, 3) and np.isfinite(e.attribution).all()
    for n in range(2):
        if not np.any(e.attribution[n]):  # only LRP-z+ after an input that can be negative (docs/methods.md)
            assert method == "lrp_zplus", "an all-zero map explains nothing"
            first_zero = next(p for p, signal in e.backward.items() if not np.any(signal[n]))  # top-down
            a_in = model.forward(x).x if first_zero == "input" else model.forward(x).outputs[first_zero]
            assert a_in[n].min() < 0, f"z+ lost all relevance above {first_zero}, whose values are >= 0"


# --- the ONNX exports -----------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")  # installed by make test (the crosscheck extra), as onnxruntime is
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402 (needs onnx)


def run_ort(path, x):
    """onnxruntime's output for one input array (one thread: the machine has 2 cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def keras_positions(name):
    """The Keras act/ key of each point where an ONNX export's layers have an output, in order: Dropout is no
    op in the graph, and a stand-alone Activation is fused into the layer before it (as the reader fuses Relu)."""
    arch = read_keras_file(FIXTURES / f"{name}.keras")
    folded, keys = arch.extra["folded"], []
    for layer in arch.layers:
        key = "act/" + folded.get(layer.name, layer.name)
        if isinstance(layer, Activation):
            keys[-1] = key
        elif not isinstance(layer, Dropout):
            keys.append(key)
    return keys


@pytest.mark.parametrize("name", MODELS)
def test_a_tf2onnx_export_computes_what_keras_and_onnxruntime_computed_at_every_layer(name):
    ref = keras_outputs(name)
    model = load(f"{name}.tf2onnx.onnx")
    fp = model.forward(preprocess(ref["x_raw"], model.preprocessing))
    assert scaled_error(fp.logits, ref["logits"]) < TOLERANCE
    assert scaled_error(fp.probs, ref["ort_probs"]) < TOLERANCE
    keys = keras_positions(name)
    assert len(keys) == len(model.layers)
    for layer, key in zip(model.layers, keys):
        if not key.endswith("_window"):  # the max-pool half of a global max pool: Keras has no output there
            assert scaled_error(fp.outputs[layer.name], ref[key]) < TOLERANCE, (layer.name, key)


def test_a_tf2onnx_export_takes_the_raw_image_in_nhwc_as_onnxruntime_does():
    """The export's own input map (Mul, Add at the input) is the model's preprocessing: the raw RGB values given
    to onnxruntime and to fbi_ref (through its preprocessing) give the same probabilities."""
    ref = keras_outputs("ft_gap")
    model = load("ft_gap.tf2onnx.onnx")
    theirs = run_ort(FIXTURES / "ft_gap.tf2onnx.onnx", ref["x_raw"])
    assert scaled_error(model.forward(preprocess(ref["x_raw"], model.preprocessing)).probs, theirs) < TOLERANCE
    np.testing.assert_allclose(model.preprocessing.mean, (127.5,) * 3, rtol=1e-6)  # Rescaling(1/127.5, -1)


def test_the_torch_export_computes_what_torch_and_onnxruntime_computed():
    ref = keras_outputs("ft_gap")
    model = load("ft_gap.torch.onnx")
    fp = model.forward(model_input("ft_gap.torch.onnx", model))
    assert scaled_error(fp.probs, ref["torch_ort_probs"]) < TOLERANCE
    assert scaled_error(fp.probs, ref["torch_probs"]) < TOLERANCE


def test_each_export_reads_its_layers_as_the_keras_file_does():
    """The layer types the ONNX reader builds are the Keras reader's, Dropout and stand-alone activations aside:
    a batch norm after a conv folded, after a ReLU or a pool an Affine; average and global pools."""
    def kinds(model):
        return [type(layer).__name__ for layer in model.layers if not isinstance(layer, (Dropout, Activation))]
    for name in MODELS:
        assert kinds(load(f"{name}.tf2onnx.onnx")) == kinds(load(f"{name}.keras")), name
    pools = load("ft_pools.tf2onnx.onnx")
    assert {type(layer) for layer in pools.layers} >= {AveragePool2D, Affine, MaxPool2D}
    assert pools.layer("global_max_pooling2d_window").pool_size == (4, 4)
    assert isinstance(load("ft_gap.torch.onnx").layers[9], GlobalAveragePool2D)
    flatten = load("ft_flatten.tf2onnx.onnx")  # the head conv's Mul, Add (its batch norm) folded into it
    assert isinstance(flatten.layer("block4_conv1"), Conv2D) and flatten.layer("block4_conv1").activation == "relu"


def edited(name, edit):
    """A fixture's ONNX graph after edit(graph), checked by onnx.checker as onnxruntime would load it."""
    model = onnx.load(str(FIXTURES / name))
    edit(model.graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(tmp_path, model, name="edited.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def float16_weights():
    """(ft_gap's graph with every conv kernel stored as float16 and cast to float32, the fixture's outputs).
    tf2onnx writes float16 or float64 variables as an initializer and a Cast to float32 (the issue's file had
    them; the fixtures do not): every conv kernel of ft_gap is stored as float16 and cast."""
    def to_float16(graph):
        for node in [n for n in graph.node if n.op_type == "Conv"]:
            stored = next(t for t in graph.initializer if t.name == node.input[1])
            half = numpy_helper.from_array(numpy_helper.to_array(stored).astype(np.float16), stored.name + "_f16")
            graph.initializer.remove(stored)
            graph.initializer.append(half)
            graph.node.insert(0, helper.make_node("Cast", [half.name], [stored.name], to=1, name=half.name + "_cast"))
    ref = keras_outputs("ft_gap")
    model = edited("ft_gap.tf2onnx.onnx", to_float16)
    return model, ref


def test_a_cast_of_float16_weights_matches_onnxruntime(tmp_path):
    model, ref = float16_weights()
    path = save(tmp_path, model)
    ours = fbi_ref.load_model(path)
    assert scaled_error(ours.forward(preprocess(ref["x_raw"], ours.preprocessing)).probs,
                        run_ort(path, ref["x_raw"])) < TOLERANCE
    # and the float16 rounding is really there: not the fixture's float32 model
    assert scaled_error(ours.forward(preprocess(ref["x_raw"], ours.preprocessing)).logits, ref["logits"]) > 1e-6


def test_a_reduce_mean_over_height_and_width_is_a_global_average_pool(tmp_path):
    def to_reduce_mean(graph):
        node = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
        node.op_type = "ReduceMean"
        node.attribute.extend([helper.make_attribute("axes", [2, 3]), helper.make_attribute("keepdims", 1)])
    ref = keras_outputs("ft_gap")
    path = save(tmp_path, edited("ft_gap.tf2onnx.onnx", to_reduce_mean))
    model = fbi_ref.load_model(path)
    assert any(isinstance(layer, GlobalAveragePool2D) for layer in model.layers)
    assert scaled_error(model.forward(preprocess(ref["x_raw"], model.preprocessing)).probs,
                        run_ort(path, ref["x_raw"])) < TOLERANCE


def one_line_error(path, error, match):
    with pytest.raises(error, match=match) as info:
        fbi_ref.load_model(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)


def test_a_graph_that_branches_for_real_is_refused_naming_the_nodes(tmp_path):
    """The shape subgraph reading block3_pool beside the flatten is not a branch; a second data path is."""
    def branch(graph):
        add = next(n for n in graph.node if n.op_type == "Add" and "dense_1/BiasAdd" in n.output[0])
        matmul = next(n for n in graph.node if n.op_type == "MatMul")
        add.input[1] = matmul.input[0]  # fc1's bias add now also reads fc1's input: two data paths
    model = onnx.load(str(FIXTURES / "ft_sequential_flatten.tf2onnx.onnx"))
    branch(model.graph)
    one_line_error(save(tmp_path, model), ArchitectureError, r"feeds 2 nodes \(.*MatMul.*, .*BiasAdd.*\)")


def test_an_input_map_that_is_not_one_value_per_channel_is_refused(tmp_path):
    def vary_along_width(graph):
        mul = next(n for n in graph.node if n.op_type == "Mul")
        constant = numpy_helper.from_array(np.linspace(0.5, 1.5, 32, dtype=np.float32).reshape(1, 1, 32, 1), "w")
        graph.initializer.append(constant)
        mul.input[1] = "w"
    path = save(tmp_path, edited("ft_gap.tf2onnx.onnx", vary_along_width))
    one_line_error(path, UnsupportedLayerError, r"shape \(1, 1, 32, 1\) .* not one value per channel")


def test_an_input_map_and_a_metadata_preprocessing_are_not_both_applied(tmp_path):
    model = onnx.load(str(FIXTURES / "ft_gap.tf2onnx.onnx"))
    model.metadata_props.add(key="fbi_ref.preprocessing", value="caffe")
    one_line_error(save(tmp_path, model), ModelFileError, "computes its own preprocessing")


def test_an_average_pool_that_counts_padding_is_refused(tmp_path):
    def count_padding(graph):  # Keras's 'same' 2 x 2 pool at stride 1, with the padding counted
        node = next(n for n in graph.node if n.op_type == "AveragePool")
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("kernel_shape", [2, 2]), helper.make_attribute("strides", [1, 1]),
                               helper.make_attribute("pads", [0, 0, 1, 1]), helper.make_attribute("count_include_pad", 1)])
    model = onnx.load(str(FIXTURES / "ft_pools.tf2onnx.onnx"))
    count_padding(model.graph)
    one_line_error(save(tmp_path, model), UnsupportedLayerError, "count_include_pad=1")


# --- the command line on fine-tunes ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Two of the fixtures' images as PNG files (their RGB values rounded to integers)."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("finetune_images")
    paths = []
    for i, rgb in enumerate(keras_outputs("ft_pools")["x_raw"][:2]):
        paths.append(folder / f"image{i}.png")
        Image.fromarray(np.round(rgb).astype(np.uint8)).save(paths[-1])
    return paths


def test_explain_and_layers_run_on_a_tf2onnx_export(pngs, tmp_path, capsys):
    onnx_file = FIXTURES / "ft_pools.tf2onnx.onnx"
    code, out, err = cli(capsys, "explain", *pngs, "--model", onnx_file, "--method", "fbi,gradient,lrp_epsilon",
                         "--out", tmp_path / "explain", "-q")
    assert code == 0 and err == "" and len(list((tmp_path / "explain").glob("*.png"))) == 2
    code, out, err = cli(capsys, "layers", pngs[0], "--model", onnx_file, "--out", tmp_path / "layers.png", "-q")
    assert code == 0 and err == "" and (tmp_path / "layers.png").stat().st_size > 0


def test_a_port_of_a_finetune_compares_against_the_reference_of_its_tf2onnx_export(pngs, tmp_path, capsys):
    """The 'port' is the Keras file of the same model read by the Keras reader (another code path, NHWC as a
    tf2onnx user's arrays are): it passes `compare --layout nhwc`; with one batch-norm shift off by 1 % of its
    activations' scale it fails there, at the Affine layer's output."""
    from fbi_ref.io.images import load_image
    onnx_file, ref_file = FIXTURES / "ft_pools.tf2onnx.onnx", tmp_path / "ref.npz"
    code, _, err = cli(capsys, "reference", "--model", onnx_file, "--images", *pngs, "--methods", "gradient,fbi",
                       "--with-weights", "--out", ref_file, "-q")
    assert code == 0, err
    ref = dict(np.load(ref_file))
    keras = load("ft_pools.keras")
    x = np.concatenate([load_image(p, keras) for p in pngs])
    fp = keras.forward(x)
    port = {"x": fp.x, "logits": fp.logits, "probs": fp.probs}
    for ours, theirs in zip(load("ft_pools.tf2onnx.onnx").layers, keras.layers):  # the same layers, other names
        port[f"act/{ours.name}"] = fp.outputs[theirs.name]
    for method in ("gradient", "fbi"):
        port[f"attr/{method}"] = fbi_ref.explain(keras, x, method).attribution
    assert set(port) - {"x"} <= set(ref)
    np.savez(tmp_path / "port.npz", **port)
    code, out, err = cli(capsys, "compare", ref_file, tmp_path / "port.npz", "--layout", "nhwc")
    assert code == 0 and "PASSED" in out, out + err
    shifted = port["act/batch_normalization_1"]
    port["act/batch_normalization_1"] = shifted + 0.01 * np.abs(shifted).max()
    np.savez(tmp_path / "bug.npz", **port)
    code, out, err = cli(capsys, "compare", ref_file, tmp_path / "bug.npz", "--layout", "nhwc")
    assert code == 1 and "first divergence: act/batch_normalization_1" in out, out + err


def test_the_pointing_game_runs_on_a_finetune_given_its_class_names(tmp_path, capsys):
    from fbi_ref.shapes.voc import write_voc
    write_voc(tmp_path / "voc", n=6, seed=3, size=(32, 32))
    model = FIXTURES / "ft_gap.tf2onnx.onnx"
    common = ["evaluate", "--dataset", tmp_path / "voc", "--model", model, "--methods", "fbi,gradient,centre",
              "--bootstrap", "50", "--out", tmp_path / "out", "-q"]
    assert_one_line_exit_2(capsys, *common, says="has no class names")
    assert_one_line_exit_2(capsys, *common, "--classes", "circle,square", says="4 outputs")
    (tmp_path / "classes.txt").write_text("circle\nsquare\ntriangle\ncross\n")
    code, out, err = cli(capsys, *common, "--classes", tmp_path / "classes.txt")
    assert code == 0, err
    result = json.loads((tmp_path / "out" / "pointing.json").read_text())
    assert set(result["all"]) >= {"fbi", "gradient", "centre"}


# --- found by a hostile review: each was a wrong model or an unbounded allocation ---------------------------

def torch_flatten_head(insert, seed=0):
    """ft_gap.torch.onnx with its global pool removed (Flatten of an (8, 4, 4) map, in NCHW order, into a Gemm of
    128 inputs) and the nodes insert(graph, flat) -> (nodes, output) put between the Flatten and the Gemm."""
    rng = np.random.default_rng(seed)
    model = onnx.load(str(FIXTURES / "ft_gap.torch.onnx"))
    graph = model.graph
    gap = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    flatten.input[0] = gap.input[0]
    graph.node.remove(gap)
    weight = next(t for t in graph.initializer if t.name == gemm.input[1])
    weight.CopyFrom(numpy_helper.from_array(rng.normal(0, 0.2, (16, 128)).astype(np.float32), weight.name))
    nodes, out = insert(graph, flatten.output[0], rng)
    gemm.input[0] = out
    position = list(graph.node).index(flatten) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    onnx.checker.check_model(model, full_check=True)
    return model


def constant(graph, name, array):
    graph.initializer.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
    return name


FLAT_INSERTS = {
    "mul": lambda g, x, rng: ([helper.make_node("Mul", [x, constant(g, "s", rng.uniform(0.2, 3, 128))], ["y"])], "y"),
    "add_relu": lambda g, x, rng: ([helper.make_node("Add", [x, constant(g, "t", rng.normal(0, 1, 128))], ["a"]),
                                    helper.make_node("Relu", ["a"], ["y"])], "y"),
    "batch_norm": lambda g, x, rng: ([helper.make_node("BatchNormalization", [x] + [
        constant(g, k, v) for k, v in (("g", rng.uniform(.5, 2, 128)), ("b", rng.normal(0, 1, 128)),
                                       ("m", rng.normal(0, 1, 128)), ("v", rng.uniform(.5, 2, 128)))], ["y"])], "y"),
}


@pytest.mark.parametrize("insert", list(FLAT_INSERTS))
def test_per_unit_constants_after_an_nchw_flatten_are_put_in_our_order(insert, tmp_path):
    """torch's Flatten -> BatchNorm1d -> Linear: the batch norm's 128 values are in (C, H, W) order, fbi_ref's flat
    tensor in (H, W, C) order (before the fix: probabilities 0.17 to 0.2 off onnxruntime's)."""
    ref = keras_outputs("ft_gap")
    path = save(tmp_path, torch_flatten_head(FLAT_INSERTS[insert]))
    model = fbi_ref.load_model(path, preprocessing="identity")
    x = (ref["x_raw"] / 127.5 - 1).astype(np.float32)  # NHWC for fbi_ref, NCHW for onnxruntime
    assert any(isinstance(layer, Affine) for layer in model.layers)
    assert scaled_error(model.forward(x).probs, run_ort(path, x.transpose(0, 3, 1, 2).copy())) < TOLERANCE


def test_nothing_but_the_identity_may_follow_the_final_softmax(tmp_path):
    """A Relu after the Softmax changes nothing in onnxruntime; read as a layer, it made fbi_ref apply softmax twice."""
    model = onnx.load(str(FIXTURES / "ft_gap.torch.onnx"))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "p"
    model.graph.node.append(helper.make_node("Relu", ["p"], [model.graph.output[0].name], name="after"))
    one_line_error(save(tmp_path, model), UnsupportedLayerError, "'after' .* after the final Softmax")


def test_a_size_used_as_a_value_is_refused(tmp_path):
    """Sizes are evaluated with a batch of 1: only a Reshape's target shape may use them (a Mul by the batch size
    gave other numbers than onnxruntime on a batch of 2)."""
    model = onnx.load(str(FIXTURES / "ft_gap.torch.onnx"))
    graph = model.graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    relu = next(n for n in graph.node if n.op_type == "Relu" and n.input[0] == conv.output[0])
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    nodes = [helper.make_node("Shape", [conv.output[0]], ["size"]),
             helper.make_node("Gather", ["size", "zero"], ["batch"]),
             helper.make_node("Cast", ["batch"], ["batch_f"], to=1),
             helper.make_node("Mul", [conv.output[0], "batch_f"], ["scaled"], name="by_batch")]
    relu.input[0] = "scaled"
    position = list(graph.node).index(conv) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    one_line_error(save(tmp_path, model), UnsupportedLayerError, "'by_batch' .* computes with a tensor's size")


@pytest.mark.parametrize("starts, ends, steps", [([-100], [-200], [-1]), ([4], [0], [-2]), ([-1], [-6], [-1]),
                                                 ([1], [100], [2]), ([-3], [2**62], [1])])
def test_slice_follows_onnx_clamping(starts, ends, steps):
    """onnxruntime's Slice of a 5-vector, negative steps and out-of-range bounds included (numpy's slices clamp
    otherwise: starts -100, ends -200, step -1 gives [v0] in ONNX and [] in numpy)."""
    from fbi_ref.io.onnx_files import _slice
    values = np.arange(10, 15, dtype=np.int64)
    graph = helper.make_graph([helper.make_node("Slice", ["v", "s", "e", "a", "t"], ["y"])], "slice",
                              [helper.make_tensor_value_info("v", onnx.TensorProto.INT64, [5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [None])],
                              [numpy_helper.from_array(np.array(v, np.int64), n)
                               for n, v in (("s", starts), ("e", ends), ("a", [0]), ("t", steps))])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                                   .SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"v": values})[0]
    ours = _slice(None, None, [values, np.array(starts), np.array(ends), np.array([0]), np.array(steps)])
    assert ours.tolist() == theirs.tolist()


def test_a_concat_of_many_constants_is_refused_before_it_is_allocated(tmp_path):
    """20,000 inputs of 1,024 values each (an 80 KB file): the sum, not each input, is bounded."""
    model = onnx.load(str(FIXTURES / "ft_gap.torch.onnx"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1024, np.int64), "block"))
    model.graph.node.insert(0, helper.make_node("Concat", ["block"] * 20_000, ["big"], axis=0, name="bomb"))
    one_line_error(save(tmp_path, model), UnsupportedLayerError, "'bomb' .* 20,480,000 values")


@pytest.mark.parametrize("file", ["ft_pools.keras", "ft_pools.tf2onnx.onnx", "ft_gap.h5"])
def test_another_preprocessing_never_replaces_a_models_own_input_map(file):
    """A model with its own Rescaling / Normalization (or the graph's Mul, Add at the input) takes RGB 0..255:
    preprocessing='identity' dropped that map silently (found by the ONNX fuzz: probabilities 0.74 off
    onnxruntime's); now refused in one line. Its own map, given again, is fine."""
    with pytest.raises(fbi_ref.errors.InputError, match="maps its input itself") as info:
        fbi_ref.load_model(FIXTURES / file, preprocessing="identity")
    assert "\n" not in str(info.value)
    own = fbi_ref.load_model(FIXTURES / file).preprocessing
    assert fbi_ref.load_model(FIXTURES / file, preprocessing=own.spec()).preprocessing == own
