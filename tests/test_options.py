"""Options and arguments: every value is checked before any work, against the method's record (methods/catalog.py)
or the command's parser, and a wrong one is one typed line (exit code 2 at the command line), never a silently
wrong result, a warning or a traceback."""
import warnings

import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import ArchitectureError, InputError, ModelFileError
from fbi_ref.methods.explain import explain
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Architecture, Conv2D

from .cli_helpers import assert_one_line_exit_2, cli
from .strategies import randn, tiny_model


BAD_OPTIONS = [
    ("integrated_gradients.batch_size=-1", "at least 1"), ("integrated_gradients.batch_size=0", "at least 1"),
    ("smoothgrad.batch_size=-2", "at least 1"), ("occlusion.batch_size=-1", "at least 1"),
    ("occlusion.stride=-1", "at least 1"), ("smoothgrad.samples=-3", "at least 1"), ("smoothgrad.samples=0", "at least 1"),
    ("lrp_epsilon.epsilon=nan", "number"), ("lrp_epsilon.epsilon=abc", "number"), ("lrp_epsilon.epsilon=0", "greater than 0"),
    ("smoothgrad.noise=nan", "number"), ("smoothgrad.noise=-1", "at least 0"), ("smoothgrad.seed=-1", "at least 0"),
    ("gradcam.layer=nope", "(H, W, C) output"), ("gradcam.layer=fc1", "(H, W, C) output"),
    ("occlusion.fill=abc", "number"), ("occlusion.patch=1000", "at most 32"), ("integrated_gradients.steps=2.5", "integer"),
    ("fbi.tau=abc", "number"), ("fbi.mask_image=3", "true or false"), ("smoothgrad.base=lrp", "one of"),
]


@pytest.mark.parametrize("option, says", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_every_bad_option_value_is_one_line_and_exit_2(small, capsys, image, tmp_path, option, says):
    method = option.split(".")[0]
    assert_one_line_exit_2(capsys, "explain", image, "--model", small, "--method", method, "--option", option,
                           "--out", tmp_path / "out", says=says)
    assert not (tmp_path / "out" / "in_explain.png").exists()


@pytest.mark.parametrize("method", fbi_ref.METHODS)
def test_extreme_inputs_give_a_finite_result_or_one_error_and_never_a_warning(method):
    model = tiny_model(0, dtype=np.float32)
    options = {"steps": 2} if method == "integrated_gradients" else {"samples": 2} if method == "smoothgrad" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (1e30, -1e30, 3e38):
            try:
                e = explain(model, np.full((1, 9, 9, 3), value, np.float32), method, **options)
            except InputError as error:
                assert "overflowed" in str(error)
            else:
                assert np.isfinite(e.attribution).all()
        with pytest.raises(InputError, match="overflowed"):
            explain(model, np.full((1, 9, 9, 3), 3e38, np.float32), method, **options)
        with pytest.raises(InputError, match="NaN or inf"):
            explain(model, np.full((1, 9, 9, 3), np.nan, np.float32), method, **options)


def test_relative_tau_minus_infinity_keeps_everything_even_when_no_product_is_positive():
    model, x = tiny_model(5), randn(6, 2, 9, 9, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for tau_mode in ("relative", "absolute"):
            e = explain(model, x, "fbi", k=1.0, tau=-np.inf, tau_mode=tau_mode, record_layers=True)
            assert all(kept.all() for name, kept in e.support.items() if name != "block2_conv1"), tau_mode
        e = explain(model, -np.abs(x), "fbi", k=1.0, tau=-np.inf, tau_mode="relative", record_layers=True)
        assert e.support["input"].all()
        nothing = explain(model, x, "fbi", k=1.0, tau=np.inf, tau_mode="relative")
        assert not nothing.attribution.any()


def test_infinite_tau_gives_no_warnings(small, capsys, image, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = cli(capsys, "explain", image, "--model", small, "--method", "fbi", "--tau", "inf",
                           "--tau-mode", "relative", "--out", tmp_path)
    assert code == 0 and err == ""


def test_a_target_too_large_for_any_integer_type_is_one_line(small, capsys, image, tmp_path):
    assert_one_line_exit_2(capsys, "explain", image, "--model", small, "--target", "99999999999999999999999",
                           "--out", tmp_path, says="out of range")


def test_maps_has_an_upper_bound(small, capsys, image, tmp_path):
    assert_one_line_exit_2(capsys, "layers", image, "--model", small, "--maps", "100", "--out", tmp_path / "l.png",
                           says="from 1 to 16")


EVALUATE = ["--model", "random", "--n-test", "6", "--n-pairs", "3", "--n-curves", "2", "--n-random", "1",
            "--n-val", "6", "--n-val-pairs", "3", "--n-val-curves", "2", "--steps", "4", "--sweep-k", "1",
            "--sweep-tau", "0", "--jobs", "1"]


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--n-pairs", "0"], ["--n-random", "0"], ["--batch-size", "0"],
                                 ["--blur-sigma", "nan"], ["--tolerance", "nan"], ["--tolerance", "-5"],
                                 ["--sweep-k", ""], ["--model-seed", "-1"], ["--steps", "1000000000"],
                                 ["--jobs", "0"], ["--threads", "-4"], ["--smoothgrad-samples", "-1"],
                                 ["--n-curves", "100"]], ids=lambda b: " ".join(b))
def test_every_evaluate_setting_is_range_checked(capsys, tmp_path, bad):
    assert_one_line_exit_2(capsys, "evaluate", *EVALUATE, *bad, "--out", tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("args", [["demo", "--n", "100000000"],
                                  ["explain", "{img}", "--method", "integrated_gradients", "--option",
                                   "integrated_gradients.steps=1000000000000"],
                                  ["explain", "{img}", "--method", "smoothgrad", "--option", "smoothgrad.samples=1e12"],
                                  ["explain", "{img}", "--method", "occlusion", "--option", "occlusion.batch_size=100000"]])
def test_counts_that_would_exhaust_memory_are_refused(small, image, tmp_path, capsys, args):
    args = [a.format(img=image) for a in args]
    assert_one_line_exit_2(capsys, *args, "--model", small, "--out", tmp_path / "o.png" if args[0] == "demo" else tmp_path)


def test_an_input_declared_enormous_is_refused_when_the_model_is_built():
    conv = Conv2D("c", np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32))
    with pytest.raises(ArchitectureError, match="activations would take"):
        Model(Architecture([conv], (100_000, 100_000, 3)))


def test_api_misuse_raises_typed_errors():
    model = tiny_model(0)
    with pytest.raises(InputError, match="must be given as a path"):
        fbi_ref.load_image(None, model)
    with pytest.raises(InputError, match="target must be None, 'top1', a class index"):
        explain(model, randn(0, 1, 9, 9, 3), "gradient", target=1.0)
    with pytest.raises(InputError, match="target must be None, 'top1', a class index"):
        explain(model, randn(0, 1, 9, 9, 3), "gradient", target=object())
    with pytest.raises(ModelFileError, match="empty"):
        fbi_ref.load_model("")
    with pytest.raises(InputError, match="a model is a name or a path"):
        fbi_ref.load_model(None)


def test_more_api_misuse_raises_typed_one_line_errors(image):
    model = tiny_model(0)
    with pytest.raises(ModelFileError, match="File name too long"):
        fbi_ref.load_model("a" * 300)
    with pytest.raises(InputError, match="model must be an fbi_ref.Model"):
        explain(None, randn(0, 1, 9, 9, 3))
    with pytest.raises(InputError, match="model must be an fbi_ref.Model"):
        fbi_ref.load_image(image, None)
    with pytest.raises(InputError, match="baseline must be") as error:
        explain(model, randn(0, 1, 9, 9, 3), "integrated_gradients", baseline=np.zeros((2, 2)))
    assert "\n" not in str(error.value)
