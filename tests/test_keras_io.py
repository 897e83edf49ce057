"""Reading every Keras weights layout, writing the official one, and every way a file can be wrong."""
import dataclasses
import json
import re
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from fbi_ref.nn.architectures import random_weights, vgg16, vgg19, weighted_layers
from fbi_ref.errors import ArchitectureError, InputError, ModelFileError, UnsupportedLayerError
from fbi_ref.io.keras_files import read_keras_file, write_keras_weights
from fbi_ref.nn.network import Conv2D, Dense, Dropout, Flatten, MaxPool2D

FIXTURE_FILES = [
    "small_vgg_keras1_style.h5",
    "small_vgg_tfk2_weights.h5",
    "small_vgg_tfk2_full.h5",
    "small_vgg_k3_legacy_full.h5",
    "small_vgg_tfk2.weights.h5",
    "small_vgg_k3.weights.h5",
    "small_vgg_k3.keras",
]

# The small model as the fixture README describes it.
SMALL_VGG_LAYERS = [
    ("Conv2D", "block1_conv1", "relu"), ("Conv2D", "block1_conv2", "relu"), ("MaxPool2D", "block1_pool", None),
    ("Conv2D", "block2_conv1", "relu"), ("Conv2D", "block2_conv2", "relu"), ("MaxPool2D", "block2_pool", None),
    ("Conv2D", "block3_conv1", "relu"), ("Conv2D", "block3_conv2", "relu"), ("MaxPool2D", "block3_pool", None),
    ("Flatten", "flatten", None),
    ("Dense", "fc1", "relu"), ("Dense", "fc2", "relu"), ("Dense", "predictions", "softmax"),
]

# Keras 3 names each group in /layers after the layer's class.
KERAS3_GROUP = {Conv2D: "conv2d", MaxPool2D: "max_pooling2d", Flatten: "flatten", Dense: "dense"}


@pytest.fixture(scope="module")
def reference(keras_fixtures):
    """The weights and activations Keras itself computed for the small model."""
    with np.load(keras_fixtures / "small_vgg_forward_reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    """A VGG16 with random weights, written in the official layout: (architecture, path)."""
    arch = random_weights(vgg16(), seed=16)
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_weights(arch, path)
    return arch, path


def signature(arch) -> list:
    """Everything about the layers except the weights: type, name, geometry, activation."""
    return [(type(layer).__name__, layer.name, getattr(layer, "strides", None), getattr(layer, "padding", None),
             getattr(layer, "pool_size", None), getattr(layer, "activation", None)) for layer in arch.layers]


def writable_copy(keras_fixtures, name, tmp_path):
    """A copy of a (read-only) fixture file that a test may modify."""
    target = tmp_path / name
    shutil.copyfile(keras_fixtures / name, target)
    return target


def layer_config(config: dict, name: str) -> dict:
    """The entry for layer `name` in a Keras model config."""
    return next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == name)


def edit_model_config(path, edit) -> None:
    """Apply `edit` to the JSON model config of a full-model .h5 file, in place."""
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = json.dumps(config)


def assert_same_weights(actual, expected) -> None:
    """Every kernel and bias of `actual` equals the one of the same layer in `expected`, bit for bit."""
    expected_layers = {layer.name: layer for layer in weighted_layers(expected)}
    assert [layer.name for layer in weighted_layers(actual)] == list(expected_layers)
    for layer in weighted_layers(actual):
        np.testing.assert_array_equal(layer.kernel, expected_layers[layer.name].kernel)
        np.testing.assert_array_equal(layer.bias, expected_layers[layer.name].bias)


def write_class_groups(arch, path, with_names: bool) -> None:
    """Write `arch` the way save_weights('x.weights.h5') does (with @name as Keras 3.15, without as tf-keras)."""
    used = {}
    with h5py.File(path, "w") as h5:
        layers = h5.create_group("layers")
        for layer in arch.layers:
            kind = KERAS3_GROUP[type(layer)]
            key = f"{kind}_{used[kind]}" if kind in used else kind
            used[kind] = used.get(kind, 0) + 1
            variables = layers.create_group(key).create_group("vars")
            if with_names:
                variables.attrs["name"] = layer.name
            for index, weight in enumerate((layer.kernel, layer.bias) if hasattr(layer, "kernel") else ()):
                variables.create_dataset(str(index), data=weight)


def describe(path) -> list:
    """The structure of an HDF5 file: every object's path, kind, shape, dtype and attributes."""
    def attributes(obj):
        return {key: (np.asarray(value).dtype.str, np.asarray(value).tolist()) for key, value in obj.attrs.items()}
    entries = []
    with h5py.File(path, "r") as h5:
        entries.append(("/", "Group", None, None, attributes(h5)))
        h5.visititems(lambda name, obj: entries.append(
            (name, type(obj).__name__, getattr(obj, "shape", None), str(getattr(obj, "dtype", "")), attributes(obj))))
    return entries


def raised(error_type, path, architecture=None) -> str:
    """The message of the error reading `path` raises, checked to be one line that names the file."""
    with pytest.raises(error_type, match=re.escape(path.name)) as info:
        read_keras_file(path, architecture)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    return message


# --- every layout Keras writes -------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_every_layout_loads_the_keras_weights_exactly(keras_fixtures, reference, name):
    arch = read_keras_file(keras_fixtures / name)
    assert [layer.name for layer in weighted_layers(arch)] == ["block1_conv1", "block1_conv2", "block2_conv1",
                                                               "block2_conv2", "block3_conv1", "block3_conv2",
                                                               "fc1", "fc2", "predictions"]
    for layer in weighted_layers(arch):
        for weight, array in (("kernel", layer.kernel), ("bias", layer.bias)):
            assert array.dtype == np.float32 and array.flags.c_contiguous
            np.testing.assert_array_equal(array, reference[f"w/{layer.name}/{weight}"])


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_every_layout_gives_the_same_architecture(keras_fixtures, name):
    arch = read_keras_file(keras_fixtures / name)
    assert arch.input_shape == (32, 32, 3)
    assert [(kind, layer, activation) for kind, layer, _, _, _, activation in signature(arch)] == SMALL_VGG_LAYERS
    for layer in arch.layers:
        if isinstance(layer, Conv2D):
            assert (layer.strides, layer.padding, layer.kernel.shape[:2]) == ((1, 1), "same", (3, 3))
        if isinstance(layer, MaxPool2D):
            assert (layer.pool_size, layer.strides, layer.padding) == ((2, 2), (2, 2), "valid")
    assert signature(arch) == signature(read_keras_file(keras_fixtures / "small_vgg_tfk2_full.h5"))


def test_an_explicit_architecture_orders_nameless_class_groups(keras_fixtures):
    arch = read_keras_file(keras_fixtures / "small_vgg_tfk2_full.h5")
    assert_same_weights(read_keras_file(keras_fixtures / "small_vgg_tfk2.weights.h5", arch), arch)


def test_layer_name_lists_split_into_chunks_are_joined(keras_fixtures, tmp_path):
    path = writable_copy(keras_fixtures, "small_vgg_keras1_style.h5", tmp_path)
    with h5py.File(path, "r+") as h5:
        names = h5.attrs["layer_names"]
        del h5.attrs["layer_names"]
        h5.attrs["layer_names0"], h5.attrs["layer_names1"] = names[:5], names[5:]
    expected = read_keras_file(keras_fixtures / "small_vgg_keras1_style.h5")
    assert signature(read_keras_file(path)) == signature(expected)
    assert_same_weights(read_keras_file(path), expected)


# --- VGG16 and VGG19 -----------------------------------------------------------------------------


def test_vgg16_in_the_official_layout_loads_as_vgg16(vgg16_file):
    arch, path = vgg16_file
    loaded = read_keras_file(path, "vgg16")
    assert loaded.input_shape == (224, 224, 3)
    assert signature(loaded) == signature(vgg16())
    assert_same_weights(loaded, arch)


def test_vgg16_shape_is_inferred_without_an_architecture(vgg16_file):
    arch, path = vgg16_file
    inferred = read_keras_file(path)
    assert inferred.input_shape == (224, 224, 3)
    assert signature(inferred) == signature(vgg16())


@pytest.mark.parametrize("builder", [vgg16, vgg19])
def test_notop_files_load_without_the_classifier(builder, tmp_path):
    arch = random_weights(builder(include_top=False), seed=1)
    write_keras_weights(arch, tmp_path / "notop.h5")
    loaded = read_keras_file(tmp_path / "notop.h5", builder.__name__)
    assert loaded.name == f"{builder.__name__}_notop" and not any(isinstance(x, Dense) for x in loaded.layers)
    assert signature(loaded) == signature(builder(include_top=False))
    assert_same_weights(loaded, arch)


@pytest.mark.parametrize("with_names", [True, False])
def test_class_groups_are_ordered_by_number_not_alphabetically(tmp_path, with_names):
    # VGG16 has 13 convolutions, so conv2d_10 .. conv2d_12 exist and sort before conv2d_2 as strings.
    arch = random_weights(vgg16(include_top=False), seed=2)
    write_class_groups(arch, tmp_path / "vgg16_notop.weights.h5", with_names)
    assert_same_weights(read_keras_file(tmp_path / "vgg16_notop.weights.h5", "vgg16"), arch)


def test_named_class_groups_infer_vgg16(tmp_path):
    arch = random_weights(vgg16(include_top=False), seed=3)
    write_class_groups(arch, tmp_path / "vgg16_notop.weights.h5", with_names=True)
    assert signature(read_keras_file(tmp_path / "vgg16_notop.weights.h5")) == signature(arch)


def test_nameless_vgg16_blocks_cannot_be_guessed(tmp_path):
    # Blocks 4 and 5 both have 512 filters: without names nothing tells where the fourth pool goes.
    write_class_groups(random_weights(vgg16(include_top=False), seed=4), tmp_path / "x.weights.h5", False)
    assert "pooling layers" in raised(ArchitectureError, tmp_path / "x.weights.h5")


# --- the writer ----------------------------------------------------------------------------------


def test_writer_reproduces_the_official_layout(keras_fixtures, tmp_path):
    official = keras_fixtures / "small_vgg_keras1_style.h5"
    write_keras_weights(read_keras_file(official), tmp_path / "written.h5")
    assert describe(tmp_path / "written.h5") == describe(official)
    assert_same_weights(read_keras_file(tmp_path / "written.h5"), read_keras_file(official))


def test_writer_splits_long_name_lists_like_keras(keras_fixtures, tmp_path):
    arch = read_keras_file(keras_fixtures / "small_vgg_keras1_style.h5")
    # 700 names of 100 bytes are more than the 64 kB HDF5 allows in one attribute.
    extra = [Dropout(f"dropout_{index:03d}_" + "x" * 88) for index in range(700)]
    long = dataclasses.replace(arch, layers=arch.layers + extra)
    write_keras_weights(long, tmp_path / "long.h5")
    with h5py.File(tmp_path / "long.h5", "r") as h5:
        assert "layer_names" not in h5.attrs and "layer_names1" in h5.attrs
    loaded = read_keras_file(tmp_path / "long.h5", long)
    assert signature(loaded) == signature(long)
    assert_same_weights(loaded, arch)


def test_writer_refuses_weights_not_loaded_yet(tmp_path):
    with pytest.raises(InputError, match="block1_conv1"):
        write_keras_weights(vgg16(include_top=False), tmp_path / "empty.h5")


# --- files that are wrong ------------------------------------------------------------------------


def test_a_file_that_is_not_hdf5_is_refused(tmp_path):
    (tmp_path / "model.h5").write_text("this is not a model\n")
    raised(ModelFileError, tmp_path / "model.h5")


@pytest.mark.parametrize("name", ["small_vgg_keras1_style.h5", "small_vgg_k3.weights.h5", "small_vgg_k3.keras"])
def test_a_truncated_file_is_refused(keras_fixtures, tmp_path, name):
    data = (keras_fixtures / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    raised(ModelFileError, tmp_path / name)


def test_an_hdf5_file_of_another_kind_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["data"] = np.zeros(3)
    assert "unknown weights layout" in raised(ModelFileError, tmp_path / "other.h5")


def test_a_wrong_kernel_shape_names_the_layer_and_both_shapes(keras_fixtures, tmp_path):
    path = writable_copy(keras_fixtures, "small_vgg_tfk2_full.h5", tmp_path)
    with h5py.File(path, "r+") as h5:
        del h5["model_weights/block2_conv1/block2_conv1/kernel:0"]
        h5["model_weights/block2_conv1/block2_conv1/kernel:0"] = np.zeros((3, 3, 8, 17), np.float32)
    message = raised(ArchitectureError, path)
    assert "block2_conv1" in message and "(3, 3, 8, 16)" in message and "(3, 3, 8, 17)" in message


def test_a_kernel_that_does_not_chain_names_the_layer_and_both_shapes(keras_fixtures, tmp_path):
    path = writable_copy(keras_fixtures, "small_vgg_keras1_style.h5", tmp_path)
    with h5py.File(path, "r+") as h5:
        del h5["block2_conv1/block2_conv1_W_1:0"]
        h5["block2_conv1/block2_conv1_W_1:0"] = np.zeros((3, 3, 9, 16), np.float32)
    message = raised(ArchitectureError, path)
    assert "block2_conv1" in message and "(3, 3, 8, 16)" in message and "(3, 3, 9, 16)" in message


def test_a_vgg16_kernel_of_the_wrong_shape_is_refused(tmp_path):
    arch = random_weights(vgg16(include_top=False), seed=5)
    arch.layers[1].kernel = arch.layers[1].kernel[:, :, :32, :]
    write_keras_weights(arch, tmp_path / "bad.h5")
    message = raised(ArchitectureError, tmp_path / "bad.h5", "vgg16")
    assert "block1_conv2" in message and "(3, 3, 64, 64)" in message and "(3, 3, 32, 64)" in message


def test_a_missing_layer_is_named(keras_fixtures, tmp_path):
    path = writable_copy(keras_fixtures, "small_vgg_tfk2_full.h5", tmp_path)
    with h5py.File(path, "r+") as h5:
        weights = h5["model_weights"]
        weights.attrs["layer_names"] = [name for name in weights.attrs["layer_names"] if name != "fc2"]
        del weights["fc2"]
    assert "fc2" in raised(ArchitectureError, path)


def test_a_missing_vgg16_layer_is_named(tmp_path):
    arch = random_weights(vgg16(include_top=False), seed=6)
    arch.layers = [layer for layer in arch.layers if layer.name != "block5_conv3"]
    write_keras_weights(arch, tmp_path / "incomplete.h5")
    assert "block5_conv3" in raised(ArchitectureError, tmp_path / "incomplete.h5", "vgg16")


def test_an_unsupported_layer_type_is_named(keras_fixtures, tmp_path):
    path = writable_copy(keras_fixtures, "small_vgg_tfk2_full.h5", tmp_path)
    edit_model_config(path, lambda config: layer_config(config, "block2_pool").update(class_name="DepthwiseConv2D"))
    message = raised(UnsupportedLayerError, path)
    assert "block2_pool" in message and "DepthwiseConv2D" in message


@pytest.mark.parametrize("layer, option, value, named", [
    ("block1_conv2", "dilation_rate", [2, 2], "dilation_rate"),
    ("block1_conv2", "groups", 2, "groups"),
    ("block1_conv2", "data_format", "channels_first", "channels_first"),
    ("fc1", "activation", "tanh", "tanh"),
])
def test_an_unsupported_layer_option_is_named(keras_fixtures, tmp_path, layer, option, value, named):
    path = writable_copy(keras_fixtures, "small_vgg_k3_legacy_full.h5", tmp_path)
    edit_model_config(path, lambda config: layer_config(config, layer)["config"].update({option: value}))
    message = raised(UnsupportedLayerError, path)
    assert layer in message and named in message


def test_an_unsupported_layer_in_a_keras_zip_is_named(keras_fixtures, tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_fixtures / "small_vgg_k3.keras") as source, zipfile.ZipFile(path, "w") as target:
        for member in source.namelist():
            data = source.read(member)
            if member == "config.json":
                config = json.loads(data)
                layer_config(config, "block3_conv1")["config"]["dilation_rate"] = [2, 2]
                data = json.dumps(config)
            target.writestr(member, data)
    assert "block3_conv1" in raised(UnsupportedLayerError, path)


def test_an_unknown_architecture_name_is_refused(keras_fixtures):
    with pytest.raises(InputError, match="resnet50"):
        read_keras_file(keras_fixtures / "small_vgg_keras1_style.h5", "resnet50")
