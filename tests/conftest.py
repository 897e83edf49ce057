"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def keras_fixtures() -> Path:
    """The folder of Keras-written reference files (override with $FBI_REF_FIXTURES)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "keras-small"
    return Path(os.environ.get("FBI_REF_FIXTURES", default))
