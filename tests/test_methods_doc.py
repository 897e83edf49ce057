"""docs/methods.md's measured numbers ("Close to DeconvNet"), recomputed: the page cannot drift from the code."""
import re
from pathlib import Path

import numpy as np

import fbi_ref
from fbi_ref.evaluation import metrics as M
from fbi_ref.methods.fbi import DEFAULTS
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
