"""The benchmark end to end on a tiny set, through the command line's run(args)."""
import argparse
import dataclasses
import json

import numpy as np
import pytest

from fbi_ref.evaluation import benchmark as E
from fbi_ref.evaluation import selection as S
from fbi_ref.cli import evaluate as C
from fbi_ref.methods.fbi import DEFAULTS, applicable
from fbi_ref.nn.network import Conv2D, Dense
from fbi_ref.io.zoo import embedded_models

from .strategies import tiny_model

MODEL = "shapes" if "shapes" in embedded_models() else "random"
TINY = ["--model", MODEL, "--n-test", "6", "--n-wrong", "4", "--n-pairs", "3", "--n-curves", "3", "--n-random", "1",
        "--n-verdict", "4", "--n-val", "6", "--n-val-pairs", "3", "--steps", "4", "--sweep-k", "0.5,1",
        "--sweep-tau", "0,0.1", "--rounds", "1", "--bootstrap", "50", "--no-progress", "--jobs", "1"]


def parse(argv):
    """Arguments as `fbi-ref evaluate` parses them."""
    return C.parse_arguments(C.configure_parser(argparse.ArgumentParser()), argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run of FBI, the gradient and the two controls: (exit code, output folder, results)."""
    out = tmp_path_factory.mktemp("evaluate")
    code = C.run(parse(TINY + ["--methods", "fbi,fbi_paper_readings,gradient,centre,random", "--out", str(out)]))
    return code, out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_run_writes_the_report_the_json_and_the_figures(tiny_run):
    code, out, _ = tiny_run
    assert code == 0
    for name in ("benchmark.md", "results.json", "curves.png", "randomisation.png", "selection.png", "examples.png",
                 "pairs.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_every_table_has_a_row_per_method_and_an_interval_per_mean(tiny_run):
    _, out, results = tiny_run
    text = (out / "benchmark.md").read_text()
    names = ["`fbi`", "`fbi_paper_readings`", "`gradient`", "`centre`", "`random`"]
    for section in ("## Localisation", "## Class discrimination", "## Randomisation verdict"):
        table = [line for line in text.split(section)[1].split("\n## ")[0].splitlines() if line.startswith("| `")]
        assert [line.split("|")[1].strip() for line in table] == names, section
    for name in ("fbi", "gradient", "centre"):
        m, intervals = results["metrics"][name], results["intervals"][name]
        for key in ("pointing", "pointing_exact", "mass", "rank", "wrong_pointing", "wrong_mass", "wrong_rank",
                    "pair_rank", "class_pointing", "class_sensitivity", "deletion", "insertion", "zeros",
                    "support_zeros", "peak_border"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
            low, high = intervals[key]
            assert low <= m[key] + 1e-12 and m[key] <= high + 1e-12, (name, key)
        assert len(results["per_image"][name]["pointing"]) == 6 and len(results["per_image"][name]["mass_drop"]) == 4
        assert len(results["per_image"][name]["class_pointing"]) == 3
        each = results["per_image"][name]  # a drop is the true class's score minus the wrong class's, per image
        assert np.allclose(each["rank_drop"], np.subtract(each["rank"][:4], each["wrong_rank"]))
        assert np.allclose(each["mass_drop"], np.subtract(each["mass"][:4], each["wrong_mass"]))
    assert results["metrics"]["gradient"]["sanity"] in ("pass", "fail", "unclear")
    assert len(results["randomisation"]["rho"]["gradient"]) == 16  # 13 convolutions + 3 dense layers
    assert len(results["randomisation"]["verdict"]["gradient"]["per_image"]) == 4
    assert "centre" not in results["randomisation"]["rho"]


@pytest.mark.slow
def test_the_controls_are_blind_to_the_class_by_construction(tiny_run):
    _, _, results = tiny_run
    centre = results["per_image"]["centre"]
    assert set(centre["class_pointing"]) == {0.5}  # the same map for both classes
    assert set(centre["pointing_drop"]) == {0.0} and set(centre["mass_drop"]) == {0.0}
    assert results["centre"]["sigma"] in results["settings"]["centre_sigmas"]
    assert results["metrics"]["centre"]["options"] == {"sigma": results["centre"]["sigma"]}


@pytest.mark.slow
def test_the_selection_covers_the_grid_then_one_round_of_changes_and_its_choice_is_the_fbi_row(tiny_run):
    _, _, results = tiny_run
    sel = results["selection"]
    assert [(r["options"]["k"], r["options"]["tau"]) for r in sel["sweep"]] == [(0.5, 0.0), (0.5, 0.1), (1.0, 0.0),
                                                                               (1.0, 0.1)]
    best = max(sel["sweep"], key=lambda r: r["score"])
    assert sel["paper_readings"] == best["options"] == results["metrics"]["fbi_paper_readings"]["options"]
    readings = ("k", "tau", "tau_mode")
    assert {k: v for k, v in best["options"].items() if k not in readings} == \
        {k: v for k, v in DEFAULTS.items() if k not in readings}
    (round_,) = sel["rounds"]
    assert round_["from"]["options"] == sel["paper_readings"]
    model = E.benchmark_model(MODEL)  # only the options that can change anything on it are tried
    expected = {change for change, _ in S.changes(sel["paper_readings"], E.Settings(sweep_k=(0.5, 1.0),
                                                                                     sweep_tau=(0.0, 0.1)), model)}
    assert not any(change.startswith(("average_pool", "affine_bias")) for change in expected)  # no such layers
    assert {r["change"] for r in round_["rows"]} == expected
    top = max(round_["rows"], key=lambda r: r["score"])
    assert sel["chosen"] == (top["options"] if top["gain"] >= S.MIN_GAIN else sel["paper_readings"])
    assert results["metrics"]["fbi"]["options"] == sel["chosen"]
    assert results["fbi_defaults"] == applicable(model, sel["chosen"])  # the options for its layers only
    for r in round_["rows"]:
        assert r["score"] == pytest.approx(S.score(r))
    # the reference points of the trade-off: guided backprop and guided Grad-CAM on the same validation images
    assert set(sel["baselines"]) == {"guided_backprop", "guided_gradcam"}
    for row in sel["baselines"].values():
        assert all(0.0 <= row[key] <= 1.0 for key in ("mass", "rank", "class_pointing"))
        assert row["score"] == pytest.approx(S.score(row))


def test_the_score_is_the_mean_of_mass_rank_accuracy_and_class_conditional_pointing():
    assert S.score({"mass": 0.4, "rank": 0.1, "class_pointing": 0.7, "pointing": 1.0}) == pytest.approx(0.4)


def test_every_option_of_fbi_enters_the_ablation_with_every_other_value():
    settings = E.Settings(sweep_k=(0.1, 0.5), sweep_tau=(0.0, 0.05))
    start = {**DEFAULTS, "k": 0.1, "tau": 0.05, "tau_mode": "relative"}
    changed = S.changes(start, settings)
    values = {option.name: option.choices for option in S.OPTION_RECORDS}
    assert set(values) == set(DEFAULTS) - {"k", "tau", "tau_mode"}  # every reading is studied
    for name, choices in values.items():
        assert choices[0] == DEFAULTS[name]  # the paper's reading first
        assert [w for w, _ in changed if w.startswith(name + "=")] == [f"{name}={v}" for v in choices[1:]]
    assert {w for w, _ in changed if w.startswith(("k=", "tau="))} == {"k=0.5", "tau=0"}
    assert ("tau_mode=absolute (tau=10)", {**start, "tau_mode": "absolute", "tau": 10.0}) in changed  # the paper's
    assert all(sum(options[k] != start[k] for k in start) == 1 for w, options in changed if "tau_mode" not in w)


def test_the_ablation_leaves_out_the_options_for_layers_a_model_does_not_have():
    start = {**DEFAULTS, "tau_mode": "relative", "tau": 0.05}
    tried = {w.split("=")[0] for w, _ in S.changes(start, E.Settings(), tiny_model(3))}
    assert "average_pool" not in tried and "affine_bias" not in tried and "unpool" in tried


@pytest.mark.slow
def test_selection_only_prints_the_chosen_settings(tmp_path, capsys):
    argv = TINY + ["--selection-only", "--sweep-k", "1", "--sweep-tau", "0", "--rounds", "0", "--out", str(tmp_path)]
    assert C.run(parse(argv)) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"fbi_defaults": {**DEFAULTS, "k": 1.0, "tau": 0.0, "tau_mode": "relative"}}
    assert (tmp_path / "selection.md").exists() and (tmp_path / "selection.json").exists()


def test_quick_sizes_are_defaults_that_given_sizes_override():
    args = parse(["--quick", "--n-test", "50"])
    assert args.n_test == 50 and args.n_pairs == E.QUICK["n_pairs"] and args.sweep_k == E.QUICK["sweep_k"]
    assert C.command_line(args) == "fbi-ref evaluate --quick --n-test 50"
    assert parse([]).n_pairs == E.Settings().n_pairs


def test_unknown_methods_models_and_fbi_options_are_refused_in_one_line(tmp_path, capsys):
    from fbi_ref.cli import main
    assert main(["evaluate", *TINY, "--methods", "fbi,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and err.count("\n") == 1
    assert main(["evaluate", *TINY, "--model", str(tmp_path / "missing.h5"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.h5: no such file" in err and err.count("\n") == 1
    assert main(["evaluate", *TINY, "--n-wrong", "7", "--out", str(tmp_path)]) == 2
    assert "n-wrong (7) must not exceed n-test (6)" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_is_deterministic_apart_from_timings_on_one_or_two_processes():
    model = C.benchmark_model("random", 3)
    settings = E.Settings(n_test=3, n_wrong=3, n_pairs=2, n_curves=2, n_random=1, n_verdict=2, n_val=3, n_val_pairs=2,
                          steps=4, sweep=False, progress=False, jobs=1, bootstrap=50)

    def strip(results):
        """The results as JSON text without the timings (NaN written as NaN, so equal runs give equal text)."""
        for key in ("seconds", "cpu_seconds", "stage_seconds"):
            results.pop(key)
        for m in results["metrics"].values():
            m.pop("ms")
        return json.dumps(results, default=str, sort_keys=True)
    first = strip(E.evaluate(model, settings, ["gradient", "gradcam", "random"])[0])
    second = strip(E.evaluate(model, dataclasses.replace(settings, jobs=2), ["gradient", "gradcam", "random"])[0])
    assert first == second.replace('"jobs": 2', '"jobs": 1')


def test_cascade_randomises_cumulatively_from_the_top():
    model = C.benchmark_model("random", 0)
    steps = list(E.cascade(model, 1))
    weighted = [layer.name for layer in model.layers if isinstance(layer, (Conv2D, Dense))]
    assert [name for name, _ in steps] == weighted[::-1]
    assert E.dense_step(model) == 2  # predictions, fc2, fc1
    for i, (_, randomised) in enumerate(steps):
        changed = [not np.array_equal(a.kernel, b.kernel) for a, b in zip(model.layers, randomised.layers)
                   if isinstance(a, (Conv2D, Dense))]
        assert changed == [False] * (len(weighted) - i - 1) + [True] * (i + 1)


def test_the_verdict_must_hold_for_every_weight_draw():
    settings = E.Settings(bootstrap=200)
    low, high, mid = np.full(40, 0.1), np.full(40, 0.9), np.linspace(0.2, 0.8, 40)
    assert E.verdict([low, low, low], settings)["sanity"] == "pass"
    assert E.verdict([high, high], settings)["sanity"] == "fail"
    mixed = E.verdict([low, high, low], settings)
    assert mixed["sanity"] == "unclear" and [d["sanity"] for d in mixed["draws"]] == ["pass", "fail", "pass"]
    assert E.verdict([mid], settings)["sanity"] == "unclear"


def test_a_map_that_randomisation_makes_constant_has_lost_its_ranking():
    before = np.random.default_rng(0).random((3, 5, 5))
    after = before.copy()
    after[1] = 0  # constant after randomisation: rho 0, not left out
    rho = E.rank_correlation(before, after)
    assert rho[0] == pytest.approx(1.0) and rho[1] == 0.0
    assert np.isnan(E.rank_correlation(np.zeros((1, 5, 5)), before[:1])[0])  # no ranking to begin with


def test_the_sanity_verdict_needs_the_whole_interval_on_one_side():
    assert E.sanity(0.3, [0.2, 0.45]) == "pass" and E.sanity(0.7, [0.5, 0.8]) == "fail"
    assert E.sanity(0.5, [0.4, 0.6]) == "unclear" and E.sanity(float("nan"), [np.nan, np.nan]) == "n/a"


def test_wrong_classes_are_never_the_label_and_cover_the_others():
    labels = np.repeat(np.arange(6), 200)
    wrong = E.wrong_classes(labels, 6, 0)
    assert not (wrong == labels).any() and set(wrong[labels == 0]) == {1, 2, 3, 4, 5}


RELATIVE = {"tau": 0.1, "tau_mode": "relative"}  # the paper's tau = 10 empties every map of this model


@pytest.mark.parametrize("change", [{}, {"mask_dense": False, "k": 0.25},
                                    {"mask_pools": True, "topk_layers": "all", "start": "contrast"},
                                    {"unpool": "switch", "topk_position": "pool", "topk_order": "after-relu"},
                                    {"start_from": "probs", "unpool_min": "pooled", "dense_bias": "subtract-support"}])
def test_the_selections_cached_forward_walk_equals_explain(change):
    from fbi_ref.io.zoo import load_model
    from fbi_ref.methods.explain import explain
    model = load_model(MODEL)
    split = E.load_split(5, 3, "single", model.input_shape[0])
    x, labels = split.x, split.labels
    options = {**DEFAULTS, **RELATIVE, **change}
    passes = S.forward_passes(model, x, 2)
    got = S.fbi_maps(model, passes, labels, options, 2)
    assert np.count_nonzero(got) > 0
    want = np.concatenate([explain(model, x[i:i + 2], "fbi", target=labels[i:i + 2], **options).heatmap
                           for i in range(0, 5, 2)])  # the same batches: BLAS rounds by batch size
    np.testing.assert_array_equal(got, want)


def test_the_forward_cache_is_keyed_by_the_images_and_the_weights():
    from fbi_ref.io.zoo import load_model
    model = load_model(MODEL)
    one, other = (E.load_split(3, seed, "single", model.input_shape[0]).x for seed in (1, 2))
    assert S.forward_passes(model, one, 2) is S.forward_passes(model, one, 2)
    assert not np.array_equal(S.forward_passes(model, other, 2)[0].logits, S.forward_passes(model, one, 2)[0].logits)
    assert S.fingerprint(model, one) != S.fingerprint(model.astype(np.float64), one)


def test_later_rounds_move_k_and_tau_only_to_their_neighbours_on_the_grid():
    assert S.neighbours((0.05, 0.1, 0.25, 0.5, 1.0), 0.25) == [0.1, 0.5]
    assert S.neighbours((0.05, 0.1, 0.25), 0.05) == [0.1]
    assert S.neighbours((0.0, 0.1), 0.3) == [0.0, 0.1]  # off the grid: every value


def test_variants_in_chunks_come_back_in_the_order_asked():
    from fbi_ref.io.zoo import load_model
    model = load_model(MODEL)
    settings = E.Settings(n_val=4, n_val_pairs=2, jobs=1, progress=False, bootstrap=10)
    data = E.load_data(model, settings.val_seed, 4, 2, 0, settings)
    grid = [{**DEFAULTS, **RELATIVE, "k": k} for k in (0.05, 0.25, 0.5, 1.0, 0.1)]
    from fbi_ref.evaluation.workers import thread_limit
    with thread_limit(settings.threads):  # as run_tasks runs them: float32 sums depend on the thread count
        one_by_one = [S.variant(model, o, data, settings) for o in grid]
    assert S.variants(model, grid, data, settings, "test") == one_by_one
