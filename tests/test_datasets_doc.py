"""docs/datasets.md's pointing-game table is a stored run (docs/datasets/voc-shapes.json): every row of the
table must be the run's, and the cheap rows must come out the same when the run is repeated."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import fbi_ref
from fbi_ref.nn.architectures import vgg16

from fbi_ref.cli import main
from fbi_ref.shapes.voc import write_voc

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = (DOCS / "datasets.md").read_text()
RUN = json.loads((DOCS / "datasets" / "voc-shapes.json").read_text())


def table():
    """{method: (score %, low %, high %)} as the page states them."""
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) - ([\d.]+) \|$", PAGE, re.M)
    return {m: tuple(map(float, v)) for m, *v in rows}


def test_every_row_of_the_table_is_the_stored_runs():
    stated = table()
    assert set(stated) == set(RUN["all"]) and RUN["pairs"] == 156 and RUN["images"] == 120
    for method, (score, low, high) in stated.items():
        s = RUN["all"][method]
        assert (score, low, high) == tuple(round(100 * v, 1) for v in (s["score"], *s["interval"])), method
    assert f"{RUN['pairs']} (image, class) pairs in {RUN['images']} images" in PAGE


@pytest.mark.slow
def test_the_cheap_rows_come_out_the_same_when_the_run_is_repeated(tmp_path):
    write_voc(tmp_path / "voc", n=120, seed=2017)
    methods = ("fbi", "gradient", "guided_backprop", "centre")
    assert main(["evaluate", "--dataset", str(tmp_path / "voc"), "--methods", ",".join(methods), "--out",
                 str(tmp_path / "out"), "--jobs", "1", "--threads", "1", "-q"]) == 0
    again = json.loads((tmp_path / "out" / "pointing.json").read_text())
    for method in methods:
        assert again["all"][method]["score"] == pytest.approx(RUN["all"][method]["score"], abs=1e-12), method


def activation_floats(arch):
    """The floats of one image's forward pass: the input and every layer's output."""
    shape, total = arch.input_shape, int(np.prod(arch.input_shape))
    for layer in arch.layers:
        shape = layer.output_shape(shape)
        total += int(np.prod(shape))
    return total


def test_the_sizes_of_the_memory_bound_are_computed():
    vgg = activation_floats(vgg16())
    assert round(vgg / 1e6) == 15 and round(4 * vgg / 2**20) == 58
    assert "about 15 M floats, 58 MiB" in PAGE
    model = fbi_ref.load_model("shapes")
    assert round(4 * activation_floats(model.architecture()) / 2**20, 1) == 1.2 and "Shapes at 64: 1.2 MiB" in PAGE
    weights = sum(getattr(layer, k).nbytes for layer in model.layers for k in ("kernel", "bias")
                  if getattr(layer, k, None) is not None)
    assert round(weights / 1e6, 1) == 4.5 and "the Shapes model: 4.5 MB" in PAGE
