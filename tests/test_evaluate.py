"""The benchmark end to end on a tiny set, through the command line's run(args)."""
import argparse
import dataclasses
import json

import numpy as np
import pytest

from fbi_ref.evaluation import benchmark as E
from fbi_ref.cli import evaluate as C
from fbi_ref.nn.network import Conv2D, Dense
from fbi_ref.io.zoo import embedded_models

MODEL = "shapes" if "shapes" in embedded_models() else "random"
TINY = ["--model", MODEL, "--n-test", "6", "--n-pairs", "3", "--n-curves", "3", "--n-random", "1",
        "--n-val", "6", "--n-val-pairs", "3", "--n-val-curves", "2", "--steps", "4",
        "--sweep-k", "0.5,1", "--sweep-tau", "0,0.1", "--no-progress", "--jobs", "1"]


def parse(argv):
    """Arguments as `fbi-ref evaluate` parses them."""
    return C.configure_parser(argparse.ArgumentParser()).parse_args(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run of FBI and the gradient: (exit code, output folder)."""
    out = tmp_path_factory.mktemp("evaluate")
    code = C.run(parse(TINY + ["--methods", "fbi,gradient", "--out", str(out)]))
    return code, out


@pytest.mark.slow
def test_run_writes_the_report_the_json_and_the_figures(tiny_run):
    code, out = tiny_run
    assert code == 0
    for name in ("benchmark.md", "results.json", "curves.png", "randomisation.png", "sweep.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_the_table_has_one_row_per_method_and_every_metric(tiny_run):
    _, out = tiny_run
    text = (out / "benchmark.md").read_text()
    section = text.split("## Test set")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in table] == ["`fbi`", "`gradient`"]
    results = json.loads((out / "results.json").read_text())
    for name in ("fbi", "gradient"):
        m = results["metrics"][name]
        for key in ("pointing", "mass", "class_sensitivity", "deletion", "insertion", "zeros", "support_zeros"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert len(m["deletion_curve"]) == 5 and m["sanity"] in ("pass", "fail")
        assert len(results["randomisation"]["rho"][name]) == 16  # 13 convolutions + 3 dense layers
    assert results["randomisation"]["layers"][:4] == ["predictions", "fc2", "fc1", "block5_conv3"]


@pytest.mark.slow
def test_the_sweep_covers_the_grid_and_its_choice_is_the_fbi_row(tiny_run):
    _, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert [(r["k"], r["tau"]) for r in results["sweep"]] == [(0.5, 0.0), (0.5, 0.1), (1.0, 0.0), (1.0, 0.1)]
    chosen = results["fbi_defaults"]
    assert chosen == E.choose_fbi_defaults(results["sweep"])
    assert results["metrics"]["fbi"]["options"] == chosen
    assert "fbi_vs_deconvnet" in results and "fbi-ref evaluate" in results["command"]


def test_choose_fbi_defaults_takes_the_best_score_and_the_first_of_equals():
    rows = [{"k": 0.5, "tau": 0.0, "tau_mode": "relative", "score": 0.4},
            {"k": 1.0, "tau": 0.1, "tau_mode": "relative", "score": 0.7},
            {"k": 0.1, "tau": 0.2, "tau_mode": "relative", "score": 0.7}]
    assert E.choose_fbi_defaults(rows) == {"k": 1.0, "tau": 0.1, "tau_mode": "relative"}


def test_fbi_score_is_the_mean_of_the_four_criteria():
    m = {"pointing": 1.0, "mass": 0.5, "class_sensitivity": 0.5, "insertion": 0.8, "deletion": 0.2}
    assert E.fbi_score(m) == pytest.approx((1.0 + 0.5 + 0.5 + 0.8) / 4)


@pytest.mark.slow
def test_sweep_only_prints_the_chosen_defaults(tmp_path, capsys):
    assert C.run(parse(TINY + ["--sweep-only", "--sweep-k", "1", "--sweep-tau", "0", "--out", str(tmp_path)])) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"fbi_defaults": {"k": 1.0, "tau": 0.0, "tau_mode": "relative"}}
    assert (tmp_path / "sweep.md").exists() and (tmp_path / "sweep.json").exists()


def test_unknown_methods_and_models_are_refused_in_one_line(tmp_path, capsys):
    from fbi_ref.cli import main
    assert main(["evaluate", *TINY, "--methods", "fbi,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and err.count("\n") == 1
    assert main(["evaluate", *TINY, "--model", str(tmp_path / "missing.h5"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.h5: no such file" in err and err.count("\n") == 1


@pytest.mark.slow
def test_evaluate_is_deterministic_apart_from_timings_on_one_or_two_processes():
    model = C.benchmark_model("random", 3)
    settings = E.Settings(n_test=3, n_pairs=2, n_curves=2, n_random=1, steps=4, sweep=False, progress=False, jobs=1)

    def strip(results):
        """The results as JSON text without the timings (NaN written as NaN, so equal runs give equal text)."""
        for key in ("seconds", "cpu_seconds", "stage_seconds"):
            results.pop(key)
        for m in results["metrics"].values():
            m.pop("ms")
        return json.dumps(results, default=str, sort_keys=True)
    first = strip(E.evaluate(model, settings, ["gradient", "gradcam"])[0])
    second = strip(E.evaluate(model, dataclasses.replace(settings, jobs=2), ["gradient", "gradcam"])[0])
    assert first == second.replace('"jobs": 2', '"jobs": 1')


def test_cascade_randomises_cumulatively_from_the_top():
    model = C.benchmark_model("random", 0)
    steps = list(E.cascade(model, 1))
    weighted = [layer.name for layer in model.layers if isinstance(layer, (Conv2D, Dense))]
    assert [name for name, _ in steps] == weighted[::-1]
    for i, (_, randomised) in enumerate(steps):
        changed = [not np.array_equal(a.kernel, b.kernel) for a, b in zip(model.layers, randomised.layers)
                   if isinstance(a, (Conv2D, Dense))]
        assert changed == [False] * (len(weighted) - i - 1) + [True] * (i + 1)
