"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def keras_fixtures() -> Path:
    """The folder of Keras-written reference files (a copy of shared/fixtures/keras-small; $FBI_REF_FIXTURES overrides)."""
    default = Path(__file__).resolve().parent / "fixtures" / "keras-small"
    return Path(os.environ.get("FBI_REF_FIXTURES", default))
