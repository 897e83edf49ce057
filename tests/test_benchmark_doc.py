"""docs/benchmark.md quotes one stored run (docs/benchmark/results.json): its report must regenerate from it,
and every number the page quotes must be that run's, so that the page cannot drift from what was measured."""
import json
import re
from pathlib import Path

import pytest

from fbi_ref.evaluation import metrics as M
from fbi_ref.evaluation import report
from fbi_ref.io.zoo import EMBEDDED_DIR
from fbi_ref.methods.fbi import DEFAULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE = (DOCS / "benchmark.md").read_text()
REPORT = (DOCS / "benchmark" / "report.md").read_text()
RESULTS = json.loads((DOCS / "benchmark" / "results.json").read_text())


def test_the_stored_report_is_what_the_stored_results_give():
    assert report.report_text(RESULTS) == REPORT


def test_every_interval_the_page_quotes_is_one_of_the_runs():
    quoted = re.findall(r"[+-]?\d\.\d{3} \[[+-]?\d\.\d{3}, [+-]?\d\.\d{3}\]", PAGE)
    assert len(quoted) > 60
    missing = [q for q in quoted if q not in REPORT]
    assert not missing, missing


def test_every_three_digit_number_the_page_quotes_is_in_the_report():
    numbers = set(re.findall(r"(?<![\d.])[+-]?\d\.\d{3}(?!\d)", PAGE))
    missing = sorted(n for n in numbers if n not in REPORT)
    assert not missing, missing


def metric(row, key):
    return RESULTS["metrics"][row][key]


def interval(row, key):
    return RESULTS["intervals"][row][key]


def compared(other, key):
    return RESULTS["comparisons"][other][key]


def test_the_pages_claims_hold_in_its_run():
    assert RESULTS["seconds"] < 300 and f"{RESULTS['seconds']:.0f} s" in PAGE  # "under 5 minutes"
    stages = RESULTS["stage_seconds"]
    assert all(f"{name} {stages[name]:.0f} s" in PAGE for name in ("validation", "test", "randomisation"))
    ms = [RESULTS["metrics"][row]["ms"] for row in ("integrated_gradients", "smoothgrad", "occlusion")]
    assert f"take {min(ms):.0f}-{max(ms):.0f} ms per explanation" in PAGE
    assert f"{RESULTS['cpu_seconds']:.0f} s CPU" in PAGE and f"accuracy on the test images {RESULTS['accuracy']:.3f}" in PAGE
    # FBI beats guided backprop on mass and class-conditional pointing outside the paired intervals, covers as
    # much (rank accuracy: a tie, not below), ties on pointing: issue 28's goal
    assert compared("guided_backprop", "mass")["interval"][0] > 0
    assert compared("guided_backprop", "class_pointing")["interval"][0] > 0
    for key in ("pointing", "rank"):
        low, high = compared("guided_backprop", key)["interval"]
        assert low < 0 < high, key
    # ... but not guided Grad-CAM's class discrimination; FBI's two tuned rows are the most precise, tied
    assert compared("guided_gradcam", "class_pointing")["interval"][1] < 0
    by_mass = sorted(RESULTS["metrics"], key=lambda r: -metric(r, "mass"))
    assert set(by_mass[:2]) == {"fbi", "fbi_paper_readings"}
    low, high = compared("fbi_paper_readings", "mass")["interval"]
    assert low < 0 < high and compared("fbi_paper_readings", "rank")["interval"][0] > 0  # more coverage, same mass
    assert max(RESULTS["metrics"], key=lambda r: metric(r, "rank")) == "gradcam_block4"
    # the paper's readings discriminate classes less than guided backprop; FBI's wrong-class mass drops little
    assert interval("fbi_paper_readings", "class_pointing")[1] < interval("guided_backprop", "class_pointing")[0]
    assert 0 < interval("fbi", "mass_drop")[0] and interval("fbi", "mass_drop")[1] < 0.06
    # Grad-CAM at block5: border peaks, below the centre; at block4 the border problem is gone
    assert f"in {100 * metric('gradcam', 'peak_border'):.0f} % of the test images" in PAGE
    assert f"in {100 * metric('gradcam_block4', 'peak_border'):.0f} % of images" in PAGE
    assert f"median {report.median(RESULTS['per_image']['gradcam']['peak_distance']):.1f} px away" in PAGE
    assert metric("gradcam", "pointing") < metric("centre", "pointing")
    assert f"the band is {100 * M.border_share((64, 64), 8):.2f} % of the image" in PAGE
    # the randomisation verdicts quoted
    verdict = RESULTS["randomisation"]["verdict"]
    assert [verdict[r]["sanity"] for r in ("fbi", "guided_backprop", "deconvnet", "gradcam", "gradcam_block4",
                                           "integrated_gradients")] == ["fail"] * 3 + ["pass"] * 2 + ["unclear"]
    r = RESULTS["randomisation"]
    assert (r["n_verdict"], r["draws"]) == (24, 3) and "24 images × 3 weight draws" in PAGE
    assert all(d["sanity"] == verdict[row]["sanity"] for row in ("fbi", "guided_backprop", "deconvnet", "gradcam",
                                                                 "gradcam_block4") for d in verdict[row]["draws"])
    unclear = ("integrated_gradients", "gradient_x_input", "lrp_epsilon", "guided_gradcam", "occlusion")
    assert all(verdict[row]["sanity"] == "unclear" and len({d["sanity"] for d in verdict[row]["draws"]}) == 2
               for row in unclear)
    by_seed = {row: dict(zip(r["seeds"], (d["sanity"] for d in verdict[row]["draws"]))) for row in verdict}
    assert by_seed["occlusion"][4242] == "fail" and by_seed["guided_gradcam"][4243] == "pass"
    # the centre control: who beats it outside the intervals
    above = lambda row, key: RESULTS["intervals"][row][key][0] > RESULTS["intervals"]["centre"][key][1]
    tested = [row for row in RESULTS["rows"] if row not in ("centre", "random", "fbi_paper")]
    assert [row for row in tested if not above(row, "pointing")] == ["gradcam"]
    assert {row for row in tested if above(row, "mass")} == {"fbi", "fbi_paper_readings", "guided_backprop",
                                                             "guided_gradcam", "gradcam_block4"}
    # the centre's sigma is the smallest tried
    assert RESULTS["centre"]["sigma"] == min(float(s) for s in RESULTS["centre"]["validation_mass"])


def test_the_selection_quoted_is_the_runs_and_the_shapes_models_defaults():
    sel = RESULTS["selection"]
    taken = [max(r["rows"], key=lambda x: x["score"]) for r in sel["rounds"]]
    assert [t["change"] for t in taken] == ["mask_image=False", "mask_dense=False", "dense_bias=ignore", "start=contrast"]
    assert all(f"`{t['change']}` ({t['gain']:+.3f})" in PAGE for t in taken)
    assert [len(r["rows"]) for r in sel["rounds"]] == [25] * 4 and "25 settings per round" in PAGE
    stated = "score = (relevance mass + relevance rank accuracy + class-conditional pointing) / 3"
    assert sel["rule"].startswith(stated) and "score = (relevance mass + relevance rank accuracy on single-object " \
        "images\n             + class-conditional pointing on pair images) / 3" in PAGE
    # the limits the page states: the round cap reached while gaining; k = 0.05 at the grid's end, barely ahead
    assert len(sel["rounds"]) == RESULTS["settings"]["rounds"] == 4 and taken[-1]["gain"] >= 0.01
    assert f"({taken[-1]['gain']:+.3f} in round 4)" in PAGE
    sweep = {(r["options"]["k"], r["options"]["tau"]): r for r in sel["sweep"]}
    best = max(sweep, key=lambda key: sweep[key]["score"])
    assert best[0] == min(RESULTS["settings"]["sweep_k"]) == 0.05
    assert 0 < sweep[best]["score"] - sweep[(0.25, best[1])]["score"] < 0.001
    # past tau = 0.01, a higher tau gives more mass and less rank accuracy, at every k
    taus = [t for t in RESULTS["settings"]["sweep_tau"] if t >= 0.01]
    for k in RESULTS["settings"]["sweep_k"]:
        rows = [sweep[(k, t)] for t in taus]
        assert all(a["mass"] < b["mass"] and a["rank"] > b["rank"] for a, b in zip(rows, rows[1:])), k
    base = sel["baselines"]["guided_backprop"]  # the validation comparison the page quotes
    assert f"guided backprop on the same images: {base['mass']:.3f}, {base['rank']:.3f}, {base['class_pointing']:.3f}" \
        in PAGE
    manifest = json.loads((EMBEDDED_DIR / "shapes.json").read_text())["fbi_defaults"]
    chosen = {k: v for k, v in sel["chosen"].items() if v != DEFAULTS[k]}
    assert manifest == chosen
    steps = {s["step"]: s for s in sel["from_deconvnet"]}
    assert steps["dense_bias=subtract"]["class_pointing"] < 0.51  # the bias alone makes DeconvNet blind


def test_the_previous_rules_choice_marked_slivers_on_these_test_images():
    """The page's account of why the rule changed, recomputed: the setting the previous rule chose (mass and
    class-conditional pointing only) has more mass than any row of the run and under half of guided backprop's
    rank accuracy, on the run's own test images."""
    import fbi_ref
    from fbi_ref.evaluation.benchmark import load_split
    settings = RESULTS["settings"]
    test = load_split(settings["n_test"], settings["test_seed"], settings["kind"], 64)
    previous = {**DEFAULTS, "k": 0.25, "tau": 0.1, "tau_mode": "relative", "start": "contrast",
                "dense_bias": "ignore", "mask_dense": False, "topk_layers": "all", "mask_image": True}
    maps = fbi_ref.explain(fbi_ref.load_model("shapes"), test.x, "fbi", target=test.labels, **previous).heatmap
    mass, rank = M.relevance_mass(maps, test.masks).mean(), M.relevance_rank(maps, test.masks).mean()
    assert mass > max(metric(row, "mass") for row in RESULTS["metrics"])
    assert rank < metric("guided_backprop", "rank") / 2
    assert abs(mass - 0.52) < 0.01 and abs(rank - 0.2) < 0.01 and "mass about 0.52, rank accuracy about 0.2" in PAGE


@pytest.mark.parametrize("image", ["benchmark_pairs.png", "benchmark_selection.png", "benchmark_curves.png",
                                   "benchmark_randomisation.png", "benchmark_tradeoff.png"])
def test_the_figures_the_docs_show_exist(image):
    assert (DOCS / "images" / image).stat().st_size > 10_000
