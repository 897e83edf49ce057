"""The verdicts of `compare` that a re-implementer following the docs could get wrong (issue 25), each with the
case that used to pass or fail wrongly: an all-zero reference, a method left out, a model given by path,
torch's flatten order; and what compare says about FBI's options and decisions when they differ."""
import dataclasses
import shutil

import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import InputError
from fbi_ref.io.arrays import load_npz
from fbi_ref.io.images import preprocess_caffe
from fbi_ref.methods.fbi import DEFAULTS, PAPER_TAU_ELSEWHERE, paper_scale, preset_options
from fbi_ref.methods.rules import count_of, start_maxmin
from fbi_ref.reference.build import build_reference
from fbi_ref.reference.compare import compare, format_comparison
from fbi_ref.shapes import generate

from .cli_helpers import assert_one_line_exit_2, cli

PAPER_LITERAL = dict(DEFAULTS)  # k = 0.5, tau = 10 absolute, maxmin start, ...: VGG16's scale


@pytest.fixture(scope="module")
def shapes():
    model = fbi_ref.load_model("shapes")
    return model, preprocess_caffe(generate(3, seed=123, kind="distractor").images)


@pytest.fixture(scope="module")
def literal_ref(shapes):
    """FBI at the paper's literal setting on the Shapes model: tau = 10 absolute empties its walk."""
    model, x = shapes
    return build_reference(model, x, ("fbi", "gradient"), options={"fbi": PAPER_LITERAL})


@pytest.fixture(scope="module")
def ref(shapes):
    model, x = shapes
    return build_reference(model, x, ("fbi", "gradient", "guided_backprop"))


def nchw(arrays, flatten_chw=True):
    """A torch-native port's file: images NCHW, and (flatten_chw) the flatten vectors in (C, H, W) order."""
    out = {}
    for key, a in arrays.items():
        a = np.asarray(a)
        if key != "meta" and a.ndim == 4:
            a = a.transpose(0, 3, 1, 2)
        elif flatten_chw and key.split("/")[-1] == "flatten" and a.ndim == 2:
            a = a.reshape(len(a), 2, 2, 128).transpose(0, 3, 1, 2).reshape(len(a), -1)  # block5_pool: (2, 2, 128)
        out[key] = a
    return out


# --- an all-zero reference checks nothing ---------------------------------------------------------------------

def test_an_all_zero_reference_fails_and_says_which_method_and_from_where(literal_ref):
    assert not np.any(literal_ref["attr/fbi"])  # the case: the paper's tau = 10 on a model of another scale
    # any port whose FBI is zero too "agreed" before: here one whose top-k would keep every map
    result = compare(literal_ref, {k: v for k, v in literal_ref.items() if k != "meta"})
    assert not result.passed and result.failed == ["attr/fbi: empty"], format_comparison(result)
    row = result.rows[-1]
    assert "attr/fbi is all zero on every image of the reference (its walk from fc1 down)" in row.note
    assert "--allow-empty" in row.note
    assert "all zero in the reference, so unchecked: fbi" in format_comparison(result).splitlines()[-1]
    allowed = compare(literal_ref, dict(literal_ref), allow_empty=True)
    assert allowed.passed and "unchecked: fbi" in format_comparison(allowed).splitlines()[-1]


def test_an_all_zero_reference_fails_on_the_command_line_unless_allowed(literal_ref, tmp_path, capsys):
    from fbi_ref.io.arrays import write_npz
    write_npz(tmp_path / "ref.npz", literal_ref)
    code, out, _ = cli(capsys, "compare", tmp_path / "ref.npz", tmp_path / "ref.npz")
    assert code == 1 and out.splitlines()[-1].startswith("FAILED") and "attr/fbi: empty" in out
    code, out, _ = cli(capsys, "compare", tmp_path / "ref.npz", tmp_path / "ref.npz", "--allow-empty")
    assert code == 0 and out.splitlines()[-1].startswith("PASSED")


def test_an_image_whose_reference_is_zero_is_named_but_does_not_fail_the_method(ref):
    partial = dict(ref)
    partial["attr/fbi"] = ref["attr/fbi"].copy()
    partial["attr/fbi"][1] = 0
    result = compare(partial, partial)
    assert result.passed and result.empty["fbi"]["images"] == [1]
    assert "attr/fbi is all zero on image 1 (of 3) of the reference: there it checks only that the other file " \
           "is zero too" in format_comparison(result)


# --- a method left out fails -----------------------------------------------------------------------------------

def test_a_method_the_other_file_has_no_key_of_fails_unless_left_out_of_the_check(ref):
    without_fbi = {k: v for k, v in ref.items() if not k.startswith(("fbi/", "attr/fbi"))}
    result = compare(ref, without_fbi)
    assert not result.passed and result.missing_methods == ["fbi"] and result.failed == ["fbi/*"]
    assert "no key in the other file for fbi" in format_comparison(result).splitlines()[-1]
    restricted = compare(ref, without_fbi, methods=["gradient", "guided_backprop"])
    assert restricted.passed and restricted.methods == ["gradient", "guided_backprop"]
    assert "methods gradient, guided_backprop" in format_comparison(restricted).splitlines()[-1]
    # the keys of a method left out are not compared, in either file: a wrong FBI then checks nothing, as asked
    wrong = {**ref, "attr/fbi": ref["attr/fbi"] + 1}
    assert compare(ref, wrong, methods=["gradient", "guided_backprop"]).passed
    assert not compare(ref, wrong).passed
    forward_only = {k: v for k, v in ref.items() if k.startswith(("x", "act/", "switch/", "logits", "probs"))}
    assert compare(ref, forward_only, methods=[]).passed
    with pytest.raises(InputError, match="the reference holds no method 'lrp_zplus'"):
        compare(ref, ref, methods=["lrp_zplus"])


def test_one_key_of_a_method_is_enough_to_check_it(ref):
    walk_only = {k: v for k, v in ref.items() if k != "attr/fbi"}
    assert compare(ref, walk_only).passed


def test_compare_methods_on_the_command_line(ref, tmp_path, capsys):
    from fbi_ref.io.arrays import write_npz
    write_npz(tmp_path / "ref.npz", ref)
    write_npz(tmp_path / "mine.npz", {k: v for k, v in ref.items() if k.startswith(("x", "act/", "gradient/", "attr/gradient"))})
    code, out, _ = cli(capsys, "compare", tmp_path / "ref.npz", tmp_path / "mine.npz")
    assert code == 1 and "no key in the other file for fbi, guided_backprop" in out.splitlines()[-1]
    code, out, _ = cli(capsys, "compare", tmp_path / "ref.npz", tmp_path / "mine.npz", "--methods", "gradient")
    assert code == 0, out
    assert "not checked (--methods gradient): fbi/..." in out
    assert_one_line_exit_2(capsys, "compare", tmp_path / "ref.npz", tmp_path / "mine.npz", "--methods", "gradient,IG",
                           says="unknown method 'IG'")
    assert_one_line_exit_2(capsys, "compare", tmp_path / "ref.npz", tmp_path / "mine.npz", "--methods", "occlusion",
                           says="the reference holds no method 'occlusion'")


# --- a model given by path: the reference carries what the replay needs ---------------------------------------

def test_a_reference_of_a_model_given_by_path_holds_its_weights_and_replays_without_it(tmp_path, capsys):
    from importlib.resources import files
    path = tmp_path / "my_shapes.h5"
    shutil.copyfile(files("fbi_ref.io.embedded") / "shapes.h5", path)
    x = tmp_path / "x.npy"
    np.save(x, preprocess_caffe(generate(2, seed=5, kind="distractor").images))
    code, _, err = cli(capsys, "reference", "--model", path, "--inputs", x, "--methods", "gradient",
                       "--out", tmp_path / "ref.npz", "-q")
    assert code == 0 and err == ""
    ref = load_npz(tmp_path / "ref.npz")
    assert "w/block1_conv1/kernel" in ref  # 4.5 MB of weights: stored without --with-weights
    path.unlink()  # the replay needs no file
    result = compare(ref, dict(ref))
    assert result.passed and result.replay_note == ""
    # --no-weights: compare cannot rebuild the model and says, in one line, which file to give it
    path2 = tmp_path / "again.h5"
    shutil.copyfile(files("fbi_ref.io.embedded") / "shapes.h5", path2)
    code, _, err = cli(capsys, "reference", "--model", path2, "--inputs", x, "--methods", "gradient", "--no-weights",
                       "--out", tmp_path / "bare.npz")
    assert code == 0 and "compare replays near ties only with --model again.h5 (sha256" in err
    bare = load_npz(tmp_path / "bare.npz")
    assert not any(k.startswith("w/") for k in bare)
    note = compare(bare, dict(bare)).replay_note
    assert "made with the model file 'again.h5' (sha256 " in note and "give that file with --model" in note
    assert "\n" not in note
    assert compare(bare, dict(bare), model=fbi_ref.load_model(str(path2))).replay_note == ""


def test_small_weights_are_stored_by_default_and_large_ones_not(shapes):
    from fbi_ref.reference.build import AUTO_WEIGHTS_BYTES, stores_weights
    model, _ = shapes
    assert stores_weights(model) and not stores_weights(model, False)  # 4.5 MB
    from types import SimpleNamespace
    layer = SimpleNamespace(weights=("kernel",), kernel=np.empty(AUTO_WEIGHTS_BYTES + 1, np.uint8))  # not touched
    big = SimpleNamespace(layers=[layer])  # VGG16's 528 MiB: found again by name, or its file by sha256
    assert not stores_weights(big) and stores_weights(big, True) and AUTO_WEIGHTS_BYTES < 528 * 2**20


# --- torch's flatten order under NCHW -------------------------------------------------------------------------

def test_flatten_vectors_in_torch_order_are_read_as_such_under_nchw(ref):
    torch_native = nchw(ref)
    result = compare(ref, torch_native)
    assert result.passed and result.layout == "nchw" and result.flatten_order == "chw", format_comparison(result)
    assert "flatten vectors in (C, H, W) order (from the values of act/flatten)" in result.layout_note
    keras_order = compare(ref, nchw(ref, flatten_chw=False))  # a port that permutes before flattening
    assert keras_order.passed and keras_order.flatten_order == "hwc"
    forced = compare(ref, torch_native, flatten="hwc")
    assert not forced.passed and forced.first_divergence == "act/flatten"
    assert not compare(ref, nchw(ref, flatten_chw=False), flatten="chw").passed
    in_nhwc = {k: v for k, v in torch_native.items()}  # NHWC files flatten as Keras does: never permuted
    assert compare(ref, {**ref, "act/flatten": in_nhwc["act/flatten"]}).first_divergence == "act/flatten"


# --- what compare says about FBI's options and decisions --------------------------------------------------------

def test_a_start_signal_of_another_fbi_option_is_named(ref):
    assert ref["meta"] is not None and "contrast" in str(ref["meta"])  # the Shapes model's own start
    other = dict(ref)
    other["fbi/backward/predictions"] = start_maxmin(ref["logits"], ref["probs"], ref["target"])
    result = compare(ref, other)
    first = result.rows[[row.key for row in result.rows].index(result.first_divergence)]
    assert result.first_divergence == "fbi/backward/predictions"
    assert "the other file's start signal is FBI's start='maxmin' (start_from='logits'); the reference's is " \
           "start='contrast'" in first.note


def test_the_options_the_other_file_wrote_are_compared_with_the_references(ref):
    import json
    meta = json.loads(str(ref["meta"]))
    meta["methods"]["fbi"]["start"], meta["methods"]["fbi"]["k"] = "maxmin", 0.5
    other = {**ref, "meta": np.array(json.dumps(meta)), "fbi/backward/predictions": ref["fbi/backward/predictions"] * 2}
    result = compare(ref, other)
    first = result.rows[[row.key for row in result.rows].index(result.first_divergence)]
    assert "the other file's fbi options differ from the reference's: k=0.5 vs 0.05, start=maxmin vs contrast" \
        in first.note


# --- k rounded half up; presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, channels, count", [(0.5, 5, 3), (0.25, 2, 1), (0.25, 10, 3), (0.5, 3, 2), (0.5, 1, 1),
                                                (0.15625, 16, 3), (0.1, 16, 2), (0.01, 16, 1), (1.0, 7, 7), (3, 2, 2)])
def test_k_is_rounded_half_up_at_least_one(k, channels, count):
    assert count_of(k, channels) == count  # max(1, floor(k * C + 0.5)): 2.5 -> 3 (Python's round gives 2)


def test_the_paper_preset_is_every_option_at_the_papers_reading(shapes):
    model, x = shapes
    assert model.fbi_defaults and not paper_scale(model)
    assert preset_options(model, "paper") == {**DEFAULTS, **PAPER_TAU_ELSEWHERE}
    assert preset_options(model, "model") == model.fbi_defaults
    e = fbi_ref.explain(model, x, "fbi", preset="paper")
    assert e.options == {**DEFAULTS, **PAPER_TAU_ELSEWHERE}
    assert np.any(e.attribution)  # a relative tau keeps the walk on this model
    np.testing.assert_array_equal(e.attribution, fbi_ref.explain(model, x, "fbi", **{**DEFAULTS, **PAPER_TAU_ELSEWHERE}).attribution)
    assert fbi_ref.explain(model, x, "fbi", preset="paper", k=0.25).options["k"] == 0.25  # given options win
    np.testing.assert_array_equal(fbi_ref.explain(model, x, "fbi", preset="model").attribution,
                                  fbi_ref.explain(model, x, "fbi").attribution)
    with pytest.raises(InputError, match="preset must be one of 'model', 'paper'"):
        fbi_ref.explain(model, x, "fbi", preset="papers")
    with pytest.raises(InputError, match="gradient has no presets"):
        fbi_ref.explain(model, x, "gradient", preset="paper")


def test_the_paper_preset_keeps_tau_10_on_the_papers_vgg16():
    class Vgg:  # the facts paper_scale reads, as the official VGG16 file gives them
        name, preprocessing, num_classes, fbi_defaults = "vgg16", "caffe", 1000, {}
    assert paper_scale(Vgg) and preset_options(Vgg, "paper") == DEFAULTS
    Vgg.preprocessing = "torchvision"  # torchvision's VGG16: another input scale
    assert preset_options(Vgg, "paper")["tau_mode"] == "relative"


def test_the_preset_on_the_command_line(tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, preprocess_caffe(generate(1, seed=5).images))
    code, _, _ = cli(capsys, "reference", "--model", "shapes", "--inputs", x, "--methods", "fbi", "--preset", "paper",
                     "--out", tmp_path / "ref.npz", "-q")
    import json
    assert code == 0
    used = json.loads(str(load_npz(tmp_path / "ref.npz")["meta"]))["methods"]["fbi"]
    assert used == {**DEFAULTS, **PAPER_TAU_ELSEWHERE}
    assert_one_line_exit_2(capsys, "reference", "--model", "shapes", "--inputs", x, "--methods", "gradient",
                           "--preset", "paper", "--out", tmp_path / "r2.npz", says="fbi is not among the methods")


@pytest.mark.torch
def test_the_pytorch_compare_recipe_passes_for_a_torch_native_port(tmp_path, monkeypatch, capsys):
    """docs/pytorch.md's recipe, run as written: a port that uses its torchvision-layout net as it is (NCHW, torch's
    flatten, classifier.0 as torch holds it) passes with the documented flags."""
    torch = pytest.importorskip("torch")
    import runpy
    from pathlib import Path

    from .vgg_torch import CFGS, VGG
    text = (Path(__file__).resolve().parent.parent / "docs" / "pytorch.md").read_text()
    script = text.split("```python\n# my_port.py")[1].split("```")[0]
    net = VGG(CFGS["vgg11"], False, width=8, fc=64, classes=10, seed=0)
    torch.save(net.state_dict(), tmp_path / "vgg11_w8.pth")
    images = [tmp_path / f"{i}.png" for i in range(2)]
    from PIL import Image
    for i, path in enumerate(images):
        Image.fromarray(generate(1, seed=40 + i).images[0]).resize((224, 224)).save(path)
    monkeypatch.chdir(tmp_path)
    code, _, _ = cli(capsys, "reference", "--model", "vgg11_w8.pth", "--images", *images, "--methods",
                     "gradient,guided_backprop", "--out", "ref.npz", "-q")
    assert code == 0
    (tmp_path / "my_port.py").write_text("# my_port.py" + script)
    runpy.run_path(str(tmp_path / "my_port.py"), init_globals={"net": net})
    code, out, _ = cli(capsys, "compare", "ref.npz", "mine.npz", "--model", "vgg11_w8.pth", "--methods", "gradient")
    assert code == 0, out
    assert "flatten vectors in (C, H, W) order (from the values of act/flatten)" in out
    code, out, _ = cli(capsys, "compare", "ref.npz", "mine.npz")  # without --methods: guided backprop is missing
    assert code == 1 and "no key in the other file for guided_backprop" in out.splitlines()[-1]


def test_only_keys_that_are_compared_count_as_a_methods_presence(ref):
    without_fbi = {k: v for k, v in ref.items() if not k.startswith(("fbi/", "attr/fbi"))}
    start_only = {**without_fbi, "fbi/backward/predictions": ref["fbi/backward/predictions"]}  # the logits decide it
    assert compare(ref, start_only).missing_methods == ["fbi"]
    ignored = {**without_fbi, "fbi/debug/x": np.zeros(3)}
    assert compare(ref, ignored, ignore=("fbi/debug",)).missing_methods == ["fbi"]
    misfit = {**without_fbi, "attr/fbi": np.zeros((3, 5))}  # of another shape: never read, checks nothing
    assert "fbi" in compare(ref, misfit).missing_methods


def test_diagnostics_never_crash_and_never_read_a_misfit(ref):
    text = {**ref, "act/flatten": np.full(ref["act/flatten"].shape, "a"),
            "fbi/backward/predictions": np.full(ref["fbi/backward/predictions"].shape, "b")}
    result = compare(ref, nchw(text), replay=False)
    assert not result.passed  # a FAILED verdict, not a traceback
    no_probs = {k: v for k, v in ref.items() if k != "probs"}
    assert not compare(no_probs, {**no_probs, "fbi/backward/predictions": ref["fbi/backward/predictions"] + 1}).passed

    class Logged(dict):
        read = []

        def __getitem__(self, key):
            Logged.read.append(key)
            return dict.__getitem__(self, key)

        def declared_shape(self, key):  # as an .npz file tells it: from the header, without reading the data
            return dict.__getitem__(self, key).shape
    other = Logged(nchw(ref))
    other["act/flatten"] = np.zeros((3, 4096), np.float32)
    other["fbi/backward/predictions"] = np.zeros((3, 7), np.float32)
    compare(ref, other)
    assert "act/flatten" not in Logged.read and "fbi/backward/predictions" not in Logged.read


def test_one_nan_does_not_flip_the_flatten_order(ref):
    port = nchw(ref, flatten_chw=False)
    port["act/flatten"] = port["act/flatten"].copy()
    port["act/flatten"][0, 0] = np.nan
    result = compare(ref, port)
    assert result.flatten_order == "hwc" and result.failed == ["act/flatten"]


def test_an_explicit_flatten_order_is_honoured_in_either_layout(ref):
    torch_order = {k: v for k, v in nchw(ref).items() if k.endswith("/flatten")}  # (C, H, W) vectors in an
    result = compare(ref, {**ref, **torch_order}, flatten="chw")  # otherwise NHWC file
    assert result.passed and result.flatten_order == "chw"


def test_an_empty_method_list_on_the_command_line_is_refused(ref, tmp_path, capsys):
    from fbi_ref.io.arrays import write_npz
    write_npz(tmp_path / "ref.npz", ref)
    assert_one_line_exit_2(capsys, "compare", tmp_path / "ref.npz", tmp_path / "ref.npz", "--methods", "",
                           says="empty method name")
    with pytest.raises(InputError, match="not the string"):
        compare(ref, ref, methods="fbi")


# FBI options under which un-pooling copies forward values into a walk of a much smaller scale: the contrast start
# makes an image's signal ~1e-4 of its activations, and min(a_p, g) takes a_p wherever it is the smaller.
COPYING = {"k": 0.05, "tau": 0.05, "tau_mode": "relative", "start": "contrast", "dense_bias": "ignore",
           "mask_dense": False, "mask_image": False, "topk_layers": "top"}


def test_forward_values_the_walk_copies_are_held_to_the_forward_passs_rounding(shapes):
    """A port whose activations differ from the reference's by 1e-6 of their scale (float rounding; the act/
    keys pass) and whose FBI walk is right for its own activations passes: the replay walks FBI on the other's
    forward values. Compared as stored, the copied values fail, measured against the walk's own scale."""
    from fbi_ref.methods.catalog import walk_rules
    from fbi_ref.methods.traversal import walk
    model, _ = shapes
    x = preprocess_caffe(generate(2, seed=5, kind="pair").images)  # a confident pair image: a signal 1e-4 small
    ref = build_reference(model, x, ("fbi",), options={"fbi": COPYING}, with_weights=True)
    fp = model.forward(x)
    copied = (ref["fbi/backward/block1_conv2"] == fp.outputs["block1_conv2"]) & (fp.outputs["block1_conv2"] > 0)
    assert copied.any()
    outputs = dict(fp.outputs)
    outputs["block1_conv2"] = np.where(copied, outputs["block1_conv2"] * (1 + 1e-6) + 1e-6 *
                                       np.abs(outputs["block1_conv2"]).max(), outputs["block1_conv2"]).astype(np.float32)
    theirs = dataclasses.replace(fp, outputs=outputs)
    start, rules, _ = walk_rules(model, "fbi", {**COPYING})
    w = walk(model, theirs, start(fp.logits, fp.probs, ref["target"]), rules, record=True)
    other = {**ref, "act/block1_conv2": outputs["block1_conv2"], "attr/fbi": w.signal,
             **{f"fbi/backward/{k}": v for k, v in w.backward.items()}}
    assert compare(ref, other).passed, format_comparison(compare(ref, other))
    stored = compare(ref, other, replay=False)
    assert not stored.passed and stored.first_divergence == "fbi/backward/block1_conv2"  # the control
