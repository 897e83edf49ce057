"""docs/methods.md against the code: its measured numbers ("Close to DeconvNet") recomputed, its tables of options,
defaults and heat maps checked against the methods' records, so the page cannot drift from the code."""
import re
from pathlib import Path

import numpy as np
import pytest

import fbi_ref
from fbi_ref.evaluation import metrics as M
from fbi_ref.methods.catalog import METHODS
from fbi_ref.methods.fbi import DEFAULTS, OPTIONS
from fbi_ref.shapes import generate

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()


def test_the_close_to_deconvnet_table_is_what_the_code_gives():
    model = fbi_ref.load_model("shapes")
    batch = generate(48, 30000)
    x = fbi_ref.preprocess_caffe(batch.images.astype(np.float32))  # (48, 64, 64, 3)
    paper = {**DEFAULTS, "k": 1.0, "tau": -np.inf}  # the paper's readings, whatever the model's own defaults
    fbi = fbi_ref.explain(model, x, "fbi", target=batch.labels, **paper)
    deconv = fbi_ref.explain(model, x, "deconvnet", target=batch.labels)
    rows = {"heat maps": (fbi.heatmap, deconv.heatmap), "attributions": (fbi.attribution, deconv.attribution)}
    for name, (a, b) in rows.items():
        r, rho = M.pearson(a, b), M.spearman(a, b)  # (48,) each
        line = next(line for line in PAGE.splitlines() if line.startswith(f"| {name}"))
        stated = [float(v) for v in re.findall(r"-?\d\.\d{3}", line)]  # median, min, max, Spearman median
        measured = [np.median(r), r.min(), r.max(), np.median(rho)]
        # the last digit may move with the thread count or the CPU (float32 sums)
        np.testing.assert_allclose(measured, stated, atol=0.0015, err_msg=line)


def table_row(name):
    """The row of docs/methods.md's FBI options table that starts with the option `name`."""
    return next((line for line in PAGE.splitlines() if line.startswith(f"| `{name}`")), None)


def cells(row):
    """A Markdown table row's cells (an escaped \\| stays inside its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_the_fbi_options_table_is_the_options_record(option):
    """Every FBI option has a row; its values are the record's choices in the record's order (the default
    first), and the paper's sentence the record quotes is the row's."""
    row = table_row(option.name) or table_row("tau")  # tau and tau_mode share a row
    assert row is not None, f"docs/methods.md has no row for {option.name}"
    values = cells(row)[1] if option.name != "tau_mode" else cells(row)[1].split(",")[1]
    shown = re.findall(r"`([^`]*)`", values)
    if option.choices:
        assert shown == [str(c) for c in option.choices], (option.name, shown)
    else:
        assert shown[0] == str(option.default), (option.name, shown)
    if option.paper:
        assert option.paper in row, option.name


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.run is not None])
def test_the_defaults_the_page_states_are_the_records(name):
    """The 'defaults' column of the several-pass methods states each record's default."""
    row = next(line for line in PAGE.splitlines() if line.startswith(f"| `{name}`"))
    stated = dict(re.findall(r"`(\w+)=([^`]+)`", cells(row)[-1]))
    defaults = METHODS[name].defaults
    assert stated, row
    for key, text in stated.items():
        assert repr(defaults[key]).replace("'", '"') == text, (name, key, text, defaults[key])


def test_the_heat_map_table_is_the_records_reductions():
    words = {"max over channels of \\|a\\|": "max_abs", "signed sum over channels": "sum",
             "mean over channels (the map itself)": "mean"}
    for label, reduction in words.items():
        row = next(line for line in PAGE.splitlines() if line.startswith(f"| {label} |"))
        listed = {m.strip() for m in cells(row)[1].split(",")}
        assert listed == {n for n, m in METHODS.items() if m.reduction == reduction}, label


def test_the_finetune_layers_table_names_every_one_walk_method():
    lines = PAGE[PAGE.index("| method | average pool, global average pool"):].splitlines()[2:]
    rows = lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", cells(row)[0])}
    assert named == {n for n, m in METHODS.items() if m.one_walk}
