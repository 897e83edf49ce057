"""The embedded Shapes model: it loads by name, matches its manifest, and is accurate on fresh images."""
import hashlib
import json

import numpy as np
import pytest

import fbi_ref
from fbi_ref.shapes import CLASSES, generate
from fbi_ref.shapes.train import accuracy
from fbi_ref.io.zoo import EMBEDDED_DIR


@pytest.fixture(scope="module")
def model():
    return fbi_ref.load_model("shapes")


def test_the_embedded_model_matches_its_manifest(model):
    manifest = json.loads((EMBEDDED_DIR / "shapes.json").read_text())
    assert hashlib.sha256((EMBEDDED_DIR / "shapes.h5").read_bytes()).hexdigest() == manifest["sha256"]
    assert model.class_names == list(CLASSES)
    assert model.input_shape == (64, 64, 3) and model.num_classes == 6
    assert [layer.name for layer in model.layers][:3] == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert len([layer for layer in model.layers if type(layer).__name__ == "Conv2D"]) == 13  # VGG16's topology


@pytest.mark.slow
def test_held_out_accuracy_on_single_objects_is_at_least_97_percent(model):
    fresh = generate(600, seed=31_337, kind="single")  # a seed used neither in training nor in the manifest
    assert accuracy(model, fresh.images, fresh.labels) >= 0.97


def test_the_file_is_in_the_official_keras_layout():
    import h5py
    with h5py.File(EMBEDDED_DIR / "shapes.h5", "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert names[:2] == ["input_1", "block1_conv1"] and len(f["input_1"].attrs["weight_names"]) == 0
        assert [w.decode() for w in f["block1_conv1"].attrs["weight_names"]] == ["block1_conv1_W_1:0", "block1_conv1_b_1:0"]


def test_fbi_defaults_come_from_the_manifest(model):
    manifest = json.loads((EMBEDDED_DIR / "shapes.json").read_text())
    for key, value in manifest.get("fbi_defaults", {}).items():
        assert model.fbi_defaults[key] == value
    e = fbi_ref.explain(model, fbi_ref.preprocess_caffe(generate(2, 0).images.astype(np.float32)), "fbi")
    assert e.options["k"] == model.fbi_defaults["k"]
