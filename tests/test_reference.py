"""Reference files: what they hold, that they are byte-identical run to run, and how `compare` reads them."""
import json
import re
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fbi_ref
from fbi_ref.cli import main
from fbi_ref.io.arrays import load_npz, write_npz
from fbi_ref.reference.build import build_reference
from fbi_ref.reference.compare import compare, format_comparison
from fbi_ref.errors import InputError

from .cli_helpers import cli
from .strategies import finetune_model, randn

DOCS = Path(__file__).resolve().parent.parent / "docs"
FEW = ("fbi", "guided_backprop", "gradcam")
FAST_OPTIONS = ["--option", "integrated_gradients.steps=2", "--option", "smoothgrad.samples=2",
                "--option", "occlusion.patch=8"]


@pytest.fixture(scope="module")
def model_path(keras_fixtures):
    return keras_fixtures / "small_vgg_k3.keras"


@pytest.fixture(scope="module")
def model(model_path):
    return fbi_ref.load_model(model_path)


@pytest.fixture(scope="module")
def keras_reference(keras_fixtures):
    return np.load(keras_fixtures / "small_vgg_forward_reference.npz")


@pytest.fixture(scope="module")
def x(keras_reference):
    return keras_reference["x"][:3]


@pytest.fixture(scope="module")
def arrays(model, model_path, x):
    return build_reference(model, x, FEW, options={"fbi": {"tau": 0.0}}, model_file=model_path)


@pytest.fixture
def inputs_npy(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path


# --- what a reference file holds -------------------------------------------------------------

def test_forward_keys_have_the_shapes_of_the_model_and_hold_keras_own_activations(arrays, model, x,
                                                                                   keras_reference):
    assert arrays["x"].shape == x.shape and arrays["x"].dtype == np.float32
    for layer in model.layers:
        act = arrays[f"act/{layer.name}"]
        assert act.shape == (len(x), *model.output_shape(layer.name))
        np.testing.assert_allclose(act, keras_reference[f"act/{layer.name}"][:3], rtol=1e-4, atol=1e-4)
    assert arrays["logits"].shape == arrays["probs"].shape == (3, 10)
    np.testing.assert_array_equal(arrays["target"], arrays["probs"].argmax(1))


def test_every_method_has_an_attribution_of_the_input_shape(arrays, x):
    assert [k for k in arrays if k.startswith("attr/")] == [f"attr/{m}" for m in FEW]
    for method in FEW:
        assert arrays[f"attr/{method}"].shape == x.shape


def test_fbi_walk_goes_from_the_top_layer_down_to_the_input(arrays, model):
    walk = [k for k in arrays if k.startswith("fbi/")]
    assert walk[0] == f"fbi/backward/{model.layers[-1].name}" and walk[-1] == "fbi/backward/input"
    assert "fbi/support/input" in walk
    np.testing.assert_array_equal(arrays["fbi/backward/input"], arrays["attr/fbi"])
    assert all(arrays[k].dtype == bool for k in walk if k.startswith("fbi/support/"))
    # Keys run in the order of the computation: input, forward pass, logits, FBI's walk, attributions.
    keys = list(arrays)
    assert keys.index("x") < keys.index("act/block1_conv1") < keys.index("logits") < keys.index(walk[0])
    assert keys.index(walk[-1]) < keys.index("attr/fbi")


def test_meta_is_json_with_versions_options_and_conventions(arrays, model_path):
    meta = json.loads(str(arrays["meta"]))
    assert meta["fbi_ref_version"] == fbi_ref.__version__ and meta["numpy_version"] == np.__version__
    assert meta["model"]["md5"] == fbi_ref.io.weights_cache.md5sum(model_path)
    assert meta["methods"]["fbi"]["tau"] == 0.0 and meta["methods"]["fbi"]["k"] == 0.5
    assert meta["methods"]["gradcam"] == {"layer": "block3_conv2"}  # every default resolved, no null
    assert [layer["name"] for layer in meta["layers"]] == [layer.name for layer in fbi_ref.load_model(model_path).layers]
    assert {"padding", "pooling_tie_break", "flatten_order", "layout"} <= set(meta["conventions"])
    assert meta["target"] == "top1" and meta["layout"] == "NHWC"


def test_with_weights_stores_every_kernel_and_bias_in_keras_layout(model, x, keras_reference):
    arrays = build_reference(model, x[:1], ["gradient"], with_weights=True)
    np.testing.assert_array_equal(arrays["w/block1_conv1/kernel"], keras_reference["w/block1_conv1/kernel"])
    np.testing.assert_array_equal(arrays["w/fc1/bias"], keras_reference["w/fc1/bias"])


def test_options_for_a_method_that_is_not_run_are_refused(model, x):
    with pytest.raises(InputError, match="occlusion"):
        build_reference(model, x, ["fbi"], options={"occlusion": {"patch": 4}})


# --- files -----------------------------------------------------------------------------------

def test_write_npz_is_byte_identical_and_np_load_reads_it_without_pickle(arrays, tmp_path):
    a, b = write_npz(tmp_path / "a.npz", arrays), write_npz(tmp_path / "b.npz", arrays)
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as data:
        assert data.files == list(arrays)
        np.testing.assert_array_equal(data["act/fc1"], arrays["act/fc1"])
    assert not list(tmp_path.glob(".*.part"))


def test_load_npz_turns_bad_files_into_one_line_errors(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "whole.npz", a=np.zeros(1000))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    for path, message in [(tmp_path / "missing.npz", "no such file"), (tmp_path / "text.npz", "not a NumPy"),
                          (tmp_path / "one.npy", "not an .npz"), (tmp_path, "folder"),
                          (tmp_path / "cut.npz", "corrupt")]:
        with pytest.raises(InputError, match=message) as error:
            load_npz(path)
        assert "\n" not in str(error.value)


def test_reference_command_twice_writes_byte_identical_files_with_all_methods(model_path, inputs_npy, tmp_path,
                                                                              capsys):
    for name in ("one.npz", "two.npz"):
        assert main(["reference", "--model", str(model_path), "--inputs", str(inputs_npy), "--out",
                     str(tmp_path / name), "-q", *FAST_OPTIONS]) == 0
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    assert one.read_bytes() == two.read_bytes()
    arrays = load_npz(one)
    assert [k for k in arrays if k.startswith("attr/")] == [f"attr/{m}" for m in fbi_ref.METHODS]
    assert json.loads(str(arrays["meta"]))["methods"]["integrated_gradients"]["steps"] == 2
    assert capsys.readouterr().out == ""  # -q


def test_reference_command_from_images_with_a_json_summary(model_path, keras_fixtures, tmp_path, capsys):
    images = [str(keras_fixtures / "image_fixture_50x37.png"), str(keras_fixtures / "image_fixture_300x240.png")]
    out = tmp_path / "ref.npz"
    assert main(["reference", "--model", str(model_path), "--images", *images, "--methods", "gradient,fbi",
                 "--target", "3", "--tau", "none", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arrays"]["x"]["shape"] == [2, 32, 32, 3] and summary["methods"] == ["gradient", "fbi"]
    arrays = load_npz(out)
    np.testing.assert_array_equal(arrays["target"], [3, 3])
    np.testing.assert_array_equal(arrays["x"][0], fbi_ref.load_image(images[0], fbi_ref.load_model(model_path))[0])
    assert json.loads(str(arrays["meta"]))["methods"]["fbi"]["tau"] == "-inf"


# --- compare ---------------------------------------------------------------------------------

def test_compare_of_a_file_with_itself_passes(arrays, tmp_path, capsys):
    path = write_npz(tmp_path / "ref.npz", arrays)
    assert main(["compare", str(path), str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASSED")


def test_compare_fails_on_one_perturbed_array_and_names_it_and_where(arrays, tmp_path, capsys):
    ref = write_npz(tmp_path / "ref.npz", arrays)
    other = dict(arrays)
    other["act/fc1"] = arrays["act/fc1"].copy()
    other["act/fc1"][2, 17] += 0.01 * np.abs(arrays["act/fc1"][2]).max()  # 1 % of image 2's scale
    write_npz(tmp_path / "other.npz", other)
    assert main(["compare", str(ref), str(tmp_path / "other.npz")]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^act/fc1 .*FAIL.*worst at image 2, unit 17.*failing per image \{2: 1\}", out, re.M), out
    assert out.splitlines()[-1].endswith("first divergence: act/fc1 at image 2, unit 17")
    assert main(["compare", str(ref), str(tmp_path / "other.npz"), "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["passed"] is False and record["failed"] == ["act/fc1"] and record["first_divergence"] == "act/fc1"
    row = next(r for r in record["rows"] if r["key"] == "act/fc1")
    assert row["worst"] == "image 2, unit 17" and row["failing_per_image"] == {"2": 1}
    assert row["measure"] == "scaled" and row["error"] == pytest.approx(0.01, rel=1e-3)


def test_an_image_whose_values_are_all_small_is_held_to_its_own_scale():
    """FBI's contrast start makes one image's attribution 1e-5 of another's: zeroing the small image must fail."""
    ref = {"attr/fbi": np.stack([np.full((4, 4, 3), 1e-5), np.ones((4, 4, 3))]).astype(np.float32)}
    other = {"attr/fbi": ref["attr/fbi"].copy()}
    other["attr/fbi"][0] = 0
    result = compare(ref, other)
    row = next(r for r in result.rows if r.key == "attr/fbi")
    assert not result.passed and row.error == pytest.approx(1.0) and row.failing_per_image == {0: 48}
    other["attr/fbi"][0] = ref["attr/fbi"][0] * (1 + 1e-6)  # float32-sized rounding of the small image passes
    assert compare(ref, other).passed


def test_first_divergence_follows_the_computation_not_the_alphabet(arrays):
    other = dict(arrays)
    for key in ("attr/fbi", "fbi/backward/block2_pool", "fbi/backward/fc1", "act/fc2"):
        other[key] = arrays[key] + 1.0
    assert compare(arrays, other).first_divergence == "act/fc2"
    del other["act/fc2"]
    assert compare(arrays, other).first_divergence == "fbi/backward/fc1"  # top of the walk first


def test_the_layout_is_detected_from_the_shapes(arrays):
    nchw = {k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v for k, v in arrays.items()}
    result = compare(arrays, nchw)
    assert result.passed and result.layout == "nchw" and "shape of x" in result.layout_note
    forced = compare(arrays, nchw, layout="nhwc")
    assert not forced.passed and "--layout nchw" in forced.rows[0].note


def test_the_layout_is_detected_from_the_values_when_every_shape_fits_both():
    rng = np.random.default_rng(0)
    ref = {"act/a": rng.standard_normal((2, 4, 4, 4))}  # C = H = W
    result = compare(ref, {"act/a": ref["act/a"].transpose(0, 3, 1, 2)})
    assert result.passed and result.layout == "nchw" and "values" in result.layout_note
    assert compare(ref, {"act/a": ref["act/a"]}).layout == "nhwc"


def test_a_key_the_reference_lacks_fails_with_the_nearest_key_suggested(arrays):
    other = dict(arrays)
    other["attr/guided-backprop"] = arrays["attr/guided_backprop"]
    other["act/conv1"] = np.zeros(2)
    result = compare(arrays, other)
    assert not result.passed and {"attr/guided-backprop", "act/conv1"} <= set(result.failed)
    notes = {row.key: row.note for row in result.rows}
    assert "did you mean attr/guided_backprop?" in notes["attr/guided-backprop"]
    assert compare(arrays, {k: v for k, v in other.items() if k != "act/conv1"},
                   ignore=("attr/guided-",)).passed


def test_missing_keys_are_listed_and_fail_only_when_required(arrays):
    other = {k: v for k, v in arrays.items() if not k.startswith("act/")}
    result = compare(arrays, other)
    assert result.passed and "act/fc1" in result.only_in_ref
    required = compare(arrays, other, require=("act/",))
    assert not required.passed and required.failed == ["act/*"]
    assert "only in REF" in format_comparison(result)


def test_the_measure_is_relative_to_the_arrays_own_scale():
    small = np.array([1e-3, -2e-3, 5e-4])
    assert compare({"a": small}, {"a": small + 1e-8}).passed  # 5e-6 of the scale
    assert not compare({"a": small}, {"a": small + 1e-6}).passed  # 5e-4 of it: beyond the 1e-4 default
    row = compare({"a": small}, {"a": small + 1e-6}).rows[0]
    assert row.error == pytest.approx(5e-4) and row.tolerance == 1e-4
    assert compare({"a": small}, {"a": small + 1e-6}, tolerances={"a": 1e-3}).passed  # per prefix
    assert compare({"a": small, "b": small}, {"a": small + 1e-6, "b": small + 1e-6}, {"a": 1e-3}).failed == ["b"]
    assert not compare({"a": small}, {"a": np.array([1e-3, np.nan, 5e-4])}).passed
    assert not compare({"s": np.array([True, False])}, {"s": np.array([True, True])}).passed
    assert compare({"i": np.array([3, 4])}, {"i": np.array([3, 4])}).rows[0].measure == "exact"
    assert not compare({}, {"a": np.zeros(1)}).passed  # nothing compared is not a pass


def test_a_version_1_file_still_compares(model, x):
    """Files written before switch/, the method walks and the replay existed keep working."""
    v2 = build_reference(model, x, ("gradient", "fbi"), options={"fbi": {"tau": 0.0}})
    v1 = {k: v for k, v in v2.items() if not k.startswith(("switch/", "gradient/")) and k != "meta"}
    meta = json.loads(str(v2["meta"]))
    meta["format_version"] = 1
    for key in ("near_ties", "warnings", "walks"):
        meta.pop(key)
    v1["meta"] = np.array(json.dumps(meta))
    assert compare(v1, v2, ignore=("switch/", "gradient/")).passed
    assert compare(v1, {k: v for k, v in v1.items() if k != "meta"}).passed


@pytest.fixture(scope="module")
def shapes_arrays():
    """A Shapes reference with every method: flat images, so max-pool windows tie exactly by the thousand."""
    from fbi_ref.io.images import preprocess_caffe
    from fbi_ref.shapes import generate
    model = fbi_ref.load_model("shapes")
    x = preprocess_caffe(generate(3, seed=123, kind="distractor").images)
    options = {"integrated_gradients": {"steps": 8, "batch_size": 3}, "smoothgrad": {"samples": 4, "batch_size": 3},
               "occlusion": {"patch": 16}}
    return model, build_reference(model, x, fbi_ref.METHODS, options=options, with_weights=True)


def test_the_reference_passes_against_itself_and_its_replay_recomputes_it_bit_for_bit(shapes_arrays):
    """The replay recomputes integrated gradients and SmoothGrad in the reference's own batches (here 8 steps
    in batches of 3): without another decision it must give the stored arrays exactly."""
    from fbi_ref.reference.replay import replay
    model, ref = shapes_arrays
    result = replay(model, ref, dict(ref))
    assert not result.refused and not result.accepted
    for key, expected in result.expected.items():
        assert np.array_equal(expected, ref[key]), key
    assert {"attr/integrated_gradients", "attr/smoothgrad"} <= set(result.expected)
    assert compare(ref, dict(ref)).passed and compare(ref, dict(ref), replay=False).passed


@pytest.mark.parametrize("fbi", [{"mask_pools": True, "topk_layers": "all", "k": 0.25, "tau": 0.1,
                                  "tau_mode": "relative"},
                                 {"mask_dense": False, "start": "contrast", "dense_bias": "ignore", "unpool": "switch",
                                  "topk_position": "pool", "topk_order": "after-relu"}])
def test_fbi_with_two_decisions_at_a_position_replays_itself_bit_for_bit(fbi):
    """Where a position holds two of FBI's decisions (a mask and a top-k, or masks on both sides of a pool),
    the replay judges them together; the reference against itself must still be recomputed exactly."""
    from fbi_ref.io.images import preprocess_caffe
    from fbi_ref.reference.replay import replay
    from fbi_ref.shapes import generate
    model = fbi_ref.load_model("shapes")
    x = preprocess_caffe(generate(2, seed=7).images)
    ref = build_reference(model, x, ("fbi",), options={"fbi": fbi})
    result = replay(model, ref, dict(ref))
    assert not result.refused
    for key, expected in result.expected.items():
        assert np.array_equal(expected, ref[key]), key
    assert compare(ref, dict(ref)).passed


def test_switches_without_values_are_judged_together_at_exact_ties(shapes_arrays):
    """A port that writes switch/ but not the pool's input cannot be checked window by window: the share of the
    reference's exact ties it wins with another cell than the first must stay within what rounding explains."""
    from fbi_ref.reference.replay import exact_ties, first_max
    model, ref = shapes_arrays
    pool = model.layers[model.index("block1_pool")]
    a = np.asarray(ref["act/block1_conv2"])
    tied = exact_ties(a, pool)
    assert tied.sum() > 1000  # flat images: the case that matters
    last = first_max(a[:, ::-1, ::-1], pool)  # the first maximum of the flipped input is the last one
    h, w = a.shape[1:3]
    last = (h - 1 - last // w) * w + (w - 1 - last % w)
    last = last[:, ::-1, ::-1]
    assert (last[tied] != ref["switch/block1_pool"][tied]).all() and (last[~tied] == ref["switch/block1_pool"][~tied]).all()
    other = {k: v for k, v in ref.items() if not k.startswith(("act/", "w/")) and k != "meta"}
    other["switch/block1_pool"] = last
    result = compare(ref, other)
    assert result.first_divergence == "switch/block1_pool", format_comparison(result)
    note = next(row.note for row in result.rows if row.key == "switch/block1_pool")
    assert f"{int(tied.sum())} of the reference's {int(tied.sum())} exact ties" in note
    few = ref["switch/block1_pool"].copy()
    few[tied] = np.where(np.cumsum(tied[tied]) <= 10, last[tied], few[tied])  # 10 windows: what rounding can do
    other["switch/block1_pool"] = few
    assert "switch/block1_pool" not in compare(ref, other).failed


def test_no_decision_is_taken_where_the_forward_pass_below_it_differs(shapes_arrays):
    """Switches are judged at their pool's input; FBI's and the many-input methods' decisions need the whole
    forward pass."""
    model, ref = shapes_arrays
    other = {k: v for k, v in ref.items() if not k.startswith("w/") and k != "meta"}
    other["act/block1_conv2"] = other["act/block1_conv2"] * 1.01
    other["switch/block1_pool"] = np.zeros_like(other["switch/block1_pool"])
    other["fbi/support/block1_conv1"] = ~other["fbi/support/block1_conv1"]  # the mask at block1_conv2's input
    result = compare(ref, other)
    assert not result.replayed and result.first_divergence == "act/block1_conv2"
    assert "clear maximum" in next(row.note for row in result.rows if row.key == "switch/block1_pool")
    assert "forward pass differs first at act/block1_conv2" in \
        next(row.note for row in result.rows if row.key == "fbi/support/block1_conv1")


def test_decision_keys_of_the_many_input_methods_must_name_a_pool_and_have_its_shape(shapes_arrays):
    model, ref = shapes_arrays
    other = {k: v for k, v in ref.items() if not k.startswith("w/") and k != "meta"}
    steps = np.broadcast_to(ref["switch/block1_pool"][:, None], (3, 8, 32, 32, 16))
    result = compare(ref, {**other, "integrated_gradients/switch/blok1_pool": steps})
    note = next(row.note for row in result.rows if row.key == "integrated_gradients/switch/blok1_pool")
    assert "did you mean integrated_gradients/switch/block1_pool?" in note
    result = compare(ref, {**other, "integrated_gradients/switch/block1_pool": steps[:, :4]}, layout="nhwc")
    assert "integrated_gradients/switch: shape (3, 4, 32, 32, 16), expected (N, 8, Ho, Wo, C)" in \
        next(row.note for row in result.rows if row.key == "attr/integrated_gradients")


def test_a_float16_file_is_compared_not_crashed_on(shapes_arrays, tmp_path, capsys):
    model, ref = shapes_arrays
    write_npz(tmp_path / "ref.npz", ref)
    write_npz(tmp_path / "half.npz", {k: (v.astype(np.float16) if v.dtype == np.float32 else v)
                                      for k, v in ref.items() if k != "meta" and not k.startswith("w/")})
    assert main(["compare", str(tmp_path / "ref.npz"), str(tmp_path / "half.npz")]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("FAILED") and "Traceback" not in out


def test_a_given_tolerance_prefix_replaces_every_builtin_one_under_it():
    from fbi_ref.reference.compare import _tolerance, _tolerances
    assert _tolerances(None) == {"": 1e-4, "lrp_epsilon/": 1e-3, "attr/lrp_epsilon": 1e-3}
    assert _tolerances(1e-6) == _tolerances({"": 1e-6}) == {"": 1e-6}
    both = _tolerances({"": 1e-6, "act/": 1e-4})
    assert _tolerance(both, "attr/lrp_epsilon") == 1e-6 and _tolerance(both, "act/fc1") == 1e-4
    short = _tolerances({"lrp": 1e-7})
    assert _tolerance(short, "lrp_epsilon/backward/input") == 1e-7 and _tolerance(short, "attr/lrp_epsilon") == 1e-3
    assert _tolerance(_tolerances({"attr/": 1e-6}), "attr/lrp_epsilon") == 1e-6
    with pytest.raises(InputError, match="finite number"):
        _tolerances({"act/": -1})


def test_the_verdict_counts_shared_arrays_and_other_keys_apart(arrays):
    from fbi_ref.reference.compare import verdict
    result = compare(arrays, {"x": arrays["x"], "attr/IG": arrays["attr/fbi"]}, methods=[])
    assert verdict(result).startswith("FAILED: the shared array agrees; 1 key unknown to REF or required and missing")
    assert "did you mean" not in result.rows[-1].note  # attr/IG is not attr/fbi
    other = {**arrays, "act/fc1": arrays["act/fc1"] + 1, "bogus": np.zeros(1)}
    assert verdict(compare(arrays, other)).startswith(f"FAILED: 1 of {len(arrays) - 1} shared arrays differ; 1 key ")


# --- the worked example in docs/reference-format.md ------------------------------------------

def doc_script():
    """The PyTorch script of the worked example, as written in the documentation."""
    text = (DOCS / "reference-format.md").read_text()
    return re.search(r"```python\n(# torch_guided_backprop\.py.*?)```", text, re.S).group(1)


@pytest.mark.torch
def test_the_documented_pytorch_guided_backprop_check_works(model_path, keras_fixtures, tmp_path, capsys,
                                                            monkeypatch):
    pytest.importorskip("torch")
    script = tmp_path / "torch_guided_backprop.py"
    script.write_text(doc_script())
    np.save(tmp_path / "x.npy", np.load(keras_fixtures / "small_vgg_forward_reference.npz")["x"])
    ref = tmp_path / "ref.npz"
    assert main(["reference", "--model", str(model_path), "--inputs", str(tmp_path / "x.npy"), "--methods",
                 "guided_backprop", "--with-weights", "--out", str(ref), "-q"]) == 0
    for extra, expected in (([], 0), (["--flatten-chw"], 1)):
        # Run as `python torch_guided_backprop.py ...` would, in this process (importing torch twice is slow).
        monkeypatch.setattr(sys, "argv", [str(script), str(ref), str(tmp_path / "torch.npz"), *extra])
        runpy.run_path(str(script), run_name="__main__")
        assert main(["compare", str(ref), str(tmp_path / "torch.npz")]) == expected  # as documented: defaults
    out = capsys.readouterr().out.splitlines()
    assert "first divergence: act/fc1 at image" in out[-1]  # torch's flatten order is read as such, so the
    # first array that goes wrong is fc1's, whose kernel rows are in the other order; its row says so
    assert any("flatten vectors in (C, H, W) order (from the values of act/flatten)" in line for line in out)
    assert "permute that kernel's rows" in [line for line in out if line.startswith("act/fc1 ")][-1]


def test_compare_on_structured_arrays_says_they_differ(tmp_path, capsys):
    write_npz(tmp_path / "a.npz", {"v": np.zeros(3)})
    write_npz(tmp_path / "b.npz", {"v": np.zeros(3, dtype=[("a", "<f8")])})
    code, out, err = cli(capsys, "compare", tmp_path / "a.npz", tmp_path / "b.npz")
    assert code == 1 and err == "" and "FAIL" in out


def test_a_reference_with_infinities_never_passes(tmp_path, capsys):
    write_npz(tmp_path / "a.npz", {"v": np.array([1.0, np.inf])})
    write_npz(tmp_path / "b.npz", {"v": np.array([1.0, 2.0])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, out, err = cli(capsys, "compare", tmp_path / "a.npz", tmp_path / "b.npz")
    assert code == 1 and err == ""


@pytest.mark.parametrize("head", ["gap", "gmp"])
def test_a_finetunes_layers_are_rebuilt_from_its_reference_and_it_replays_itself(head):
    """Average pools, global pools and affine layers: meta records them so that a port can rebuild the network."""
    from fbi_ref.reference.model import reference_model
    from fbi_ref.reference.replay import replay
    model = finetune_model(51, head).astype(np.float32)
    x = randn(52, 2, 9, 9, 3).astype(np.float32)
    options = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}, "occlusion": {"patch": 3}}
    ref = build_reference(model, x, fbi_ref.METHODS, options=options, with_weights=True)
    types = [spec["type"] for spec in json.loads(str(ref["meta"]))["layers"]]
    assert {"Affine", "AveragePool2D", "GlobalAveragePool2D" if head == "gap" else "MaxPool2D"} <= set(types)
    rebuilt, why = reference_model(ref)
    assert why == "" and [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in model.layers]
    np.testing.assert_array_equal(rebuilt.forward(x).logits, model.forward(x).logits)
    result = replay(rebuilt, ref, dict(ref))
    for key, expected in result.expected.items():
        assert np.array_equal(expected, ref[key]), key
    assert compare(ref, dict(ref), allow_empty=True).passed  # its FBI walk is empty: not what this checks


def test_a_reference_never_makes_compare_open_a_path_it_names(tmp_path):
    """meta.model.name is a name, never a file to open (an absolute path made compare load and parse that file).
    The model file here is the very one the reference was made from, so only the rule can refuse it."""
    import shutil
    from fbi_ref.reference.model import reference_model
    source = Path(__file__).resolve().parent / "fixtures" / "finetunes" / "ft_gap.keras"
    path = tmp_path / "ft_gap.keras"
    shutil.copy(source, path)
    model = fbi_ref.load_model(path)
    arrays = build_reference(model, randn(0, 1, 32, 32, 3, dtype=np.float32), methods=("gradient",))
    meta = json.loads(str(arrays["meta"]))
    meta["model"]["name"] = str(path)  # what a hostile or careless file can say
    arrays["meta"] = np.array(json.dumps(meta))
    found, why = reference_model(arrays)
    assert found is None and "names no model fbi_ref knows" in why
    assert reference_model(arrays, model)[0] is model  # --model is how a model is given


def huge_zero_member(archive, key, shape):
    """A member of zeros declaring `shape` (float32), written in 1 MB pieces: a small file, a large array."""
    import zipfile
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        left, piece = int(np.prod(shape)) * 4, bytes(2**20)
        while left:
            f.write(piece[:min(left, len(piece))])
            left -= min(left, len(piece))


def test_compare_reads_no_array_of_other_whose_header_cannot_match(tmp_path):
    """Three members of 400 MB of zeros in a file of 1.2 MB, under keys of the reference with other shapes:
    compare reports the shapes from the headers and reads none of them (`k in other` and np.ndim(other[k])
    decompressed whole members: 6.8 GB and 77 s for three 1.9 GiB ones)."""
    import tracemalloc
    import zipfile
    from fbi_ref.io.arrays import open_npz
    ref = {"x": np.zeros((1, 4, 4, 3), np.float32), "act/a": np.ones((1, 8), np.float32),
           "act/b": np.ones((1, 2, 2, 5), np.float32), "logits": np.ones((1, 3), np.float32)}
    write_npz(tmp_path / "ref.npz", ref)
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as archive:
        for key in ("act/a", "act/b", "extra"):
            huge_zero_member(archive, key, (10_000, 10_000))
    assert (tmp_path / "other.npz").stat().st_size < 2 * 2**20
    tracemalloc.start()
    with open_npz(tmp_path / "ref.npz") as r, open_npz(tmp_path / "other.npz") as o:
        result = compare(r, o)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak:,} bytes"
    rows = {row.key: row for row in result.rows}
    assert not rows["act/a"].passed and "shape (1, 8) vs (10000, 10000)" in rows["act/a"].note
    assert not rows["act/b"].passed and not rows["extra"].passed and not result.passed


@pytest.fixture(scope="module")
def small_reference():
    model = fbi_ref.load_model("shapes")
    return build_reference(model, randn(0, 2, *model.input_shape, dtype=np.float32), methods=("gradient",),
                           with_weights=True)


def meta_edited(change):
    def edit(arrays):
        meta = json.loads(str(arrays["meta"]))
        arrays["meta"] = np.array(json.dumps(change(meta)))
    return edit


def replaced(key, value):
    def edit(arrays):
        arrays[key] = value
    return edit


@pytest.mark.parametrize("edit, says", [
    (replaced("meta", np.array("{not json")), "its meta is not JSON"),
    (replaced("meta", np.array("[1, 2]")), "its meta is a JSON list, not an object"),
    (meta_edited(lambda m: {**m, "model": [1]}), "meta's 'model' is a JSON array"),
    (meta_edited(lambda m: {**m, "layers": "junk"}), "meta's 'layers' is a JSON string"),
    (meta_edited(lambda m: {**m, "layers": [1, 2]}), "meta's 'layers' are not records"),
    (meta_edited(lambda m: {**m, "dtype": {"a": 1}}), "meta's 'dtype' is a JSON object"),
    (replaced("target", np.array([999, 0])), "its target [999, 0] is not a class index"),
], ids=["not-json", "a-list", "model-a-list", "layers-text", "layers-numbers", "dtype-object", "target-out-of-range"])
def test_a_damaged_reference_is_one_line_in_compare(small_reference, tmp_path, capsys, edit, says):
    """Each was a traceback (or, for the target, a pass of a reference that could not have been computed)."""
    arrays = dict(small_reference)
    edit(arrays)
    write_npz(tmp_path / "bad.npz", arrays)
    write_npz(tmp_path / "good.npz", small_reference)
    code, out, err = cli(capsys, "compare", tmp_path / "bad.npz", tmp_path / "good.npz")
    assert code == 2 and says in err and err.count("\n") == 1 and "bad.npz" in err, err


def test_a_reference_whose_layer_records_are_junk_compares_without_a_traceback(small_reference, tmp_path, capsys):
    """A reference with its weights and a layer record of junk ('strides': 'ab') ended in a TypeError while its
    model was rebuilt for the replay; that candidate is passed over (here the model named 'shapes' replays)."""
    arrays = dict(small_reference)
    meta = json.loads(str(arrays["meta"]))
    conv = next(layer for layer in meta["layers"] if layer["type"] == "Conv2D")
    conv["strides"] = "ab"
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz(tmp_path / "junk.npz", arrays)
    code, out, err = cli(capsys, "compare", tmp_path / "junk.npz", tmp_path / "junk.npz")
    assert code == 0 and "Traceback" not in err and "PASSED" in out, out + err
