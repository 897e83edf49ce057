"""Shared pytest fixtures: the Keras-written fixture files, a small model file, an image file."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def keras_fixtures() -> Path:
    """The folder of Keras-written reference files (a copy of shared/fixtures/keras-small; $FBI_REF_FIXTURES overrides)."""
    default = Path(__file__).resolve().parent / "fixtures" / "keras-small"
    return Path(os.environ.get("FBI_REF_FIXTURES", default))


@pytest.fixture(scope="session")
def small(keras_fixtures):
    """The Keras-written small VGG (official layout)."""
    return keras_fixtures / "small_vgg_keras1_style.h5"


@pytest.fixture
def image(tmp_path):
    """A small RGB image file."""
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path
