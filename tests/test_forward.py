"""The NumPy forward pass reproduces Keras's own numbers on every Keras-written fixture file; the Model keeps what
belongs to it (its FBI defaults) through every model derived from it."""
import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import InputError
from fbi_ref.evaluation import benchmark
from fbi_ref.io.keras_files import write_keras_weights
from fbi_ref.methods.explain import explain
from fbi_ref.nn.architectures import random_weights, vgg16

from .strategies import randn, tiny_model

FILES = ["small_vgg_keras1_style.h5", "small_vgg_tfk2_weights.h5", "small_vgg_tfk2_full.h5",
         "small_vgg_k3_legacy_full.h5", "small_vgg_tfk2.weights.h5", "small_vgg_k3.weights.h5", "small_vgg_k3.keras"]


@pytest.fixture(scope="module")
def reference(keras_fixtures):
    return dict(np.load(keras_fixtures / "small_vgg_forward_reference.npz"))


@pytest.mark.parametrize("name", FILES)
def test_forward_matches_keras_logits_and_every_activation(keras_fixtures, reference, name):
    model = fbi_ref.load_model(keras_fixtures / name)
    fp = model.forward(reference["x"])
    assert fp.logits.dtype == np.float32
    np.testing.assert_allclose(fp.logits, reference["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fp.probs, reference["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fp.probs.argmax(1), reference["top1"])
    layers = [k[len("act/"):] for k in reference if k.startswith("act/")]
    assert set(layers) == set(fp.outputs)
    for layer in layers:
        np.testing.assert_allclose(fp.outputs[layer], reference[f"act/{layer}"], rtol=1e-5, atol=1e-5, err_msg=layer)


def test_preprocessing_matches_keras(reference):
    np.testing.assert_allclose(fbi_ref.preprocess_caffe(reference["x_raw_rgb"]), reference["x"], rtol=0, atol=1e-5)


def test_load_image_gives_the_models_input(keras_fixtures):
    model = fbi_ref.load_model(keras_fixtures / "small_vgg_k3.keras")
    x = fbi_ref.load_image(keras_fixtures / "image_fixture_50x37.png", model)
    expected = np.load(keras_fixtures / "image_loading_reference.npz")["50x37/vgg16_input_nearest"]
    np.testing.assert_array_equal(x, expected)
    assert model.forward(x).probs.shape == (1, 10)


def test_a_vgg16_shaped_file_in_the_official_layout_runs_a_224_forward_pass(tmp_path):
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_weights(random_weights(vgg16(), seed=0), path)
    model = fbi_ref.load_model(path, architecture="vgg16")
    assert model.input_shape == (224, 224, 3) and model.num_classes == 1000
    x = np.random.default_rng(0).normal(0, 50, (1, 224, 224, 3)).astype(np.float32)
    fp = model.forward(x)
    assert fp.outputs["block5_pool"].shape == (1, 7, 7, 512)
    assert fp.probs.shape == (1, 1000) and np.isclose(fp.probs.sum(), 1, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 32, 32)), "shape"), (np.zeros((1, 31, 32, 3), np.float32), "shape"),
    (np.zeros((1, 32, 32, 3), np.uint8), "dtype"), (np.full((1, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 32, 32, 3), np.inf, np.float32), "inf"), (np.zeros((0, 32, 32, 3), np.float32), "empty"),
    ([[1.0]], "numpy array")])
def test_bad_input_arrays_are_refused_with_a_clear_message(keras_fixtures, bad, match):
    model = fbi_ref.load_model(keras_fixtures / "small_vgg_k3.keras")
    with pytest.raises(InputError, match=match):
        model.forward(bad)


def test_float64_copy_computes_the_same_in_double_precision(keras_fixtures, reference):
    model = fbi_ref.load_model(keras_fixtures / "small_vgg_k3.keras").astype(np.float64)
    fp = model.forward(reference["x"].astype(np.float64))
    assert fp.logits.dtype == np.float64
    np.testing.assert_allclose(fp.logits, reference["logits"], rtol=1e-5, atol=1e-5)


def test_astype_and_the_randomised_models_keep_the_fbi_defaults():
    model = tiny_model(0, dtype=np.float32)
    model.fbi_defaults = {"k": 0.25, "tau": 0.05, "tau_mode": "relative"}
    assert model.astype(np.float64).fbi_defaults == model.fbi_defaults
    for _, randomised in benchmark.cascade(model, seed=1):
        assert randomised.fbi_defaults == model.fbi_defaults and randomised.class_names == model.class_names
    x = randn(1, 1, 9, 9, 3)
    assert explain(model.astype(np.float64), x, "fbi").options["tau_mode"] == "relative"
