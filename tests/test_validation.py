"""The validation workflow end to end: an independent PyTorch port (tests/torch_port.py) must pass `fbi-ref
compare` by default, in float32 and float64, on references of the embedded Shapes model and of the Keras-written
fixture model; and each bug planted in it must fail at the first array where it goes wrong.

Skipped without torch; `make test` installs torch==2.13.0, so CI runs them.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbi_ref.cli import main
from fbi_ref.io.arrays import load_npz, write_npz
from fbi_ref.io.images import preprocess_caffe
from fbi_ref.reference import compare, format_comparison
from fbi_ref.reference.compare import Aligned
from fbi_ref.reference.model import reference_model
from fbi_ref.reference.replay import replay
from fbi_ref.shapes import generate

torch = pytest.importorskip("torch")
from . import torch_port  # noqa: E402  (needs torch)

pytestmark = [pytest.mark.torch, pytest.mark.slow]
FAST = ["--option", "integrated_gradients.steps=16", "--option", "smoothgrad.samples=8"]


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory):
    """Six distractor and two pair images of the Shapes data set as PNG files, and their RGB arrays."""
    folder = tmp_path_factory.mktemp("images")
    single, pairs = generate(6, seed=123, kind="distractor"), generate(2, seed=5, kind="pair")
    rgb = np.concatenate([single.images, pairs.images])
    paths = []
    for i, image in enumerate(rgb):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths, rgb


def reference(tmp_path_factory, name, *args):
    """A reference file written by the command line, loaded."""
    path = tmp_path_factory.mktemp("ref") / f"{name}.npz"
    assert main(["reference", *map(str, args), "--with-weights", "--out", str(path), "-q"]) == 0
    return load_npz(path)


@pytest.fixture(scope="module")
def shapes_ref(tmp_path_factory, shapes_images):
    return reference(tmp_path_factory, "shapes", "--model", "shapes", "--images", *shapes_images[0], *FAST)


FLAT = (slice(8, 40), slice(8, 40))  # a flat square: identical 3x3 neighbourhoods, so exact ties in block1_pool


@pytest.fixture(scope="module")
def tied_ref(tmp_path_factory):
    """A reference of the Shapes model on images with a flat grey square painted in: its max-pool windows there
    hold equal values on every CPU (built on purpose, not left to one machine's rounding)."""
    rgb = generate(4, seed=7, kind="distractor").images.copy()
    rgb[:, FLAT[0], FLAT[1]] = (150, 120, 90)
    x = tmp_path_factory.mktemp("tied") / "x.npy"
    np.save(x, preprocess_caffe(rgb))
    return reference(tmp_path_factory, "tied", "--model", "shapes", "--inputs", x, "--methods",
                     "gradient,guided_backprop,fbi")


# The paper's readings of FBI's options (the Shapes model's own defaults are not all the paper's): the FBI
# bugs below act on steps those readings take (the dense bias, the masks at dense inputs and at the image).
PAPER_READINGS = ["--preset", "paper"]


@pytest.fixture(scope="module")
def shapes_paper_ref(tmp_path_factory, shapes_images):
    """FBI with the paper's readings, k = 0.1 and tau = 0.05 relative."""
    return reference(tmp_path_factory, "paper", "--model", "shapes", "--images", *shapes_images[0], "--methods", "fbi",
                     "--k", "0.1", "--tau", "0.05", "--tau-mode", "relative", *PAPER_READINGS)


@pytest.fixture(scope="module")
def shapes_tau0_ref(tmp_path_factory, shapes_images):
    """FBI with tau = 0 (absolute): products equal to tau exist, so '>' and '>=' differ."""
    return reference(tmp_path_factory, "tau0", "--model", "shapes", "--images", *shapes_images[0], "--methods", "fbi",
                     "--tau", "0", "--tau-mode", "absolute", *PAPER_READINGS)


@pytest.fixture(scope="module")
def shapes_half_k_ref(tmp_path_factory, shapes_images):
    """FBI with the Shapes model's defaults, top-k at every conv layer and k = 0.15625: k * 16 = 2.5 at the
    16-channel layers, where rounding half up (3) and half to even (2) differ."""
    return reference(tmp_path_factory, "halfk", "--model", "shapes", "--images", *shapes_images[0], "--methods", "fbi",
                     "--k", "0.15625", "--option", "fbi.topk_layers=all")


@pytest.fixture(scope="module")
def keras_ref(tmp_path_factory, keras_fixtures):
    x = tmp_path_factory.mktemp("x") / "x.npy"
    np.save(x, np.load(keras_fixtures / "small_vgg_forward_reference.npz")["x"])
    # FBI at the paper's readings with a relative tau: the paper's tau = 10 is VGG16's scale and empties this
    # model's walk (compare would fail it as checking nothing)
    return reference(tmp_path_factory, "keras", "--model", keras_fixtures / "small_vgg_k3.keras", "--inputs", x, *FAST,
                     "--preset", "paper")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("which", ["shapes", "keras"])
def test_a_correct_port_passes_by_default(shapes_ref, keras_ref, which, dtype):
    ref = shapes_ref if which == "shapes" else keras_ref
    result = compare(ref, torch_port.run(ref, dtype))  # no tolerance given: the defaults
    assert result.passed, format_comparison(result)
    assert result.layout == "nchw" and len(result.rows) > 100


def test_near_ties_that_a_port_breaks_the_other_way_are_replayed_not_failed(tied_ref):
    meta = json.loads(str(tied_ref["meta"]))
    assert meta["near_ties"]["block1_pool"]["exact"] > 100  # the flat square: the reason the replay exists
    port = torch_port.run(tied_ref, torch.float32, rounding="other")
    result = compare(tied_ref, port)
    assert result.passed, format_comparison(result)
    assert result.replayed["switch/block1_pool"] > 100 and sum(row.accepted for row in result.rows) > 100
    without = compare(tied_ref, port, replay=False)
    assert not without.passed and without.first_divergence == "switch/block1_pool"
    assert compare(tied_ref, torch_port.run(tied_ref, torch.float32, ("last_max_on_ties",))).first_divergence \
        == "switch/block1_pool"  # the control: a port that takes the last maximum by rule still fails there


# bug -> (methods the port runs, the reference, the key where compare must first see it: the position of the
# computation where the bug acts, or the first position after it when the bug acts inside a layer's rule)
PLANTED = {
    "flipped_kernels": (("gradient",), "shapes", "act/block1_conv1"),
    "swapped_kernel_axes": (("gradient",), "shapes", "act/block1_conv1"),
    "flatten_chw": (("gradient",), "keras", "act/fc1"),  # its flatten vector is torch's, and read as such
    "no_bgr": (("gradient",), "shapes", "x"),
    "guided_with_deconvnet_rule": (("guided_backprop",), "shapes", "guided_backprop/backward/fc1"),
    "softmax_target": (("gradient",), "shapes", "gradient/backward/predictions"),
    "last_max_on_ties": (("deconvnet",), "shapes", "switch/block1_pool"),
    "gradcam_align_corners": (("gradcam",), "shapes", "attr/gradcam"),
    "gradcam_nearest": (("gradcam",), "shapes", "attr/gradcam"),
    "ig_left_riemann": (("integrated_gradients",), "shapes", "attr/integrated_gradients"),
    "fbi_bias_ignored": (("fbi",), "paper", "fbi/support/fc2"),
    "fbi_no_min": (("fbi",), "paper", "fbi/support/block5_conv3"),
    "fbi_topk_forward_score": (("fbi",), "paper", "fbi/support/block5_conv3"),
    "fbi_mask_ge": (("fbi",), "tau0", "fbi/support/fc2"),
    "fbi_topk_round_half_even": (("fbi",), "halfk", "fbi/support/block1_conv2"),
    "fbi_no_image_mask": (("fbi",), "paper", "fbi/backward/input"),
    "fbi_contrast_cancellation": (("fbi",), "shapes", "fbi/backward/predictions"),
}
# The FBI bugs that act on a step of the Shapes model's own defaults (contrast start, no dense bias, no dense
# or image masks, top-k at the last conv layer) planted on a reference written with those defaults: each image
# is judged at its own scale, so images whose start signal is 1e-5 of another's are checked as closely.
PLANTED_ON_DEFAULTS = {
    "fbi_no_min": "fbi/support/block5_conv3",
    "fbi_topk_forward_score": "fbi/support/block5_conv3",
    "fbi_contrast_cancellation": "fbi/backward/predictions",
}  # (fbi_no_image_mask is no bug there: the Shapes defaults have mask_image=False)


def test_every_bug_of_the_port_is_planted_here():
    assert set(PLANTED) == set(torch_port.BUGS)


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_bug_fails_at_the_first_array_where_it_goes_wrong(shapes_ref, shapes_paper_ref, shapes_tau0_ref,
                                                                     shapes_half_k_ref, keras_ref, shapes_images, bug):
    methods, which, first = PLANTED[bug]
    ref = {"shapes": shapes_ref, "paper": shapes_paper_ref, "tau0": shapes_tau0_ref, "halfk": shapes_half_k_ref,
           "keras": keras_ref}[which]
    rgb = shapes_images[1] if bug == "no_bgr" else None  # this port preprocesses the images itself
    result = compare(ref, torch_port.run(ref, torch.float32, (bug,), rgb=rgb, methods=methods), methods=methods)
    assert not result.passed, f"{bug} was not caught:\n{format_comparison(result)}"
    assert result.first_divergence == first, f"{bug}: first divergence {result.first_divergence}, expected {first}"
    clean = compare(ref, torch_port.run(ref, torch.float32, (), rgb=shapes_images[1] if rgb is not None else None,
                                        methods=methods), methods=methods)
    assert clean.passed, format_comparison(clean)  # the same port without the bug: the control


@pytest.mark.parametrize("bug", sorted(PLANTED_ON_DEFAULTS))
def test_an_fbi_bug_fails_under_the_models_own_defaults_too(shapes_ref, bug):
    result = compare(shapes_ref, torch_port.run(shapes_ref, torch.float32, (bug,), methods=("fbi",)), methods=["fbi"])
    assert not result.passed, f"{bug} was not caught:\n{format_comparison(result)}"
    assert result.first_divergence == PLANTED_ON_DEFAULTS[bug], (bug, result.first_divergence)


def test_a_last_maximum_rule_on_the_many_inputs_fails_even_with_its_winners_exported(shapes_ref):
    """Winners on the inputs of integrated gradients cannot be checked one by one (no file holds the port's
    values there); at exact ties of the reference they are judged together (replay.later_at_ties)."""
    methods = ("integrated_gradients",)
    good = torch_port.run(shapes_ref, torch.float32, methods=methods)
    bad = torch_port.run(shapes_ref, torch.float32, ("last_max_on_ties",), methods=methods)
    mixed = {**good, **{k: v for k, v in bad.items() if k.startswith(("integrated_gradients/", "attr/"))}}
    result = compare(shapes_ref, mixed, methods=methods)
    assert result.first_divergence == "attr/integrated_gradients", format_comparison(result)
    assert "exact ties (equal window maxima) won by another cell than the first" in result.rows[
        [row.key for row in result.rows].index("attr/integrated_gradients")].note
    assert compare(shapes_ref, good, methods=methods).passed  # the control


def test_a_port_that_writes_neither_winners_nor_pool_inputs_is_told_what_to_write(tied_ref):
    port = torch_port.run(tied_ref, torch.float32, methods=("gradient",), rounding="other")
    result = compare(tied_ref, {k: v for k, v in port.items() if not k.startswith(("switch/", "act/"))},
                     methods=["gradient"])
    assert not result.passed, format_comparison(result)
    first = next(row for row in result.rows if row.key == result.first_divergence)
    assert "holds neither switch/<pool> nor the pool's input" in first.note


def test_a_port_file_written_by_the_script_compares_through_the_command_line(shapes_ref, tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    write_npz(ref, shapes_ref)
    torch_port.main([str(ref), str(tmp_path / "mine.npz")])
    assert main(["compare", str(ref), str(tmp_path / "mine.npz")]) == 0
    out = capsys.readouterr().out
    assert "layout: nchw" in out and out.strip().splitlines()[-1].startswith("PASSED")


@pytest.mark.parametrize("which", ["shapes", "keras"])
def test_a_correct_port_stays_within_a_quarter_of_every_tolerance(shapes_ref, keras_ref, which):
    """The margin of the defaults: a correct port's worst error is far from failing it."""
    ref = shapes_ref if which == "shapes" else keras_ref
    for dtype in (torch.float32, torch.float64):
        result = compare(ref, torch_port.run(ref, dtype))
        close = [(row.key, row.error, row.tolerance) for row in result.rows
                 if row.measure == "scaled" and row.error > row.tolerance / 4]
        assert not close, close


def test_the_near_tie_claims_of_the_documentation_hold_on_every_machine(shapes_ref):
    """docs/reference-format.md, 'Near ties, real and built on purpose': the claims about the real near ties of
    the Shapes reference that hold whatever the CPU (which of them a port breaks the other way does not)."""
    meta = json.loads(str(shapes_ref["meta"]))
    assert meta["near_ties"]["block1_pool"]["near"] > 1000 and meta["near_ties"]["block1_pool"]["exact"] > 100
    assert meta["near_ties"]["block1_pool"]["windows"] == 131_072
    port = torch_port.run(shapes_ref, torch.float32)
    replayed = compare(shapes_ref, port)
    assert replayed.passed, format_comparison(replayed)
    scaled = [row for row in replayed.rows if row.measure == "scaled"]
    assert max(row.error / row.tolerance for row in scaled) < 0.25
    assert max(r.error for r in scaled if "lrp_epsilon" in r.key) < 2.5e-4
    assert max(r.error for r in scaled if "lrp_epsilon" not in r.key) < 1e-5
    # "switches without values": a correct port breaks under 1 % of the exact ties on the interpolated inputs
    ties = replay(reference_model(shapes_ref)[0], shapes_ref, Aligned(port, "nchw")).ties
    taken, tied = np.sum([ties[k] for k in ties if k.startswith("integrated_gradients/")], axis=0)
    assert tied > 10_000 and taken < 0.01 * tied


def test_the_planted_bug_table_of_the_documentation_is_the_tested_one():
    text = (Path(__file__).resolve().parent.parent / "docs" / "reference-format.md").read_text()
    table = text.split("## Wrong ports fail, and where")[1].split("\n## ")[0]
    rows = [[cell.strip().strip("`") for cell in line.split("|")[1:-1]]
            for line in table.splitlines() if line.startswith("| `")]
    assert {bug: (caught, first) for bug, _, caught, first in rows} == \
        {bug: ("yes", first) for bug, (_, _, first) in PLANTED.items()}


DIAGNOSED = {  # bug -> what the note of its first failing row says about the decision it took otherwise
    "fbi_topk_forward_score": "decided otherwise: the top-k selection: image",
    "fbi_topk_round_half_even": "(k = 0.15625 of 16 maps: 3, by max(1, floor(k * C + 0.5))",
    "fbi_bias_ignored": "decided otherwise: the tau mask (g * a > tau, tau = 0.05 relative)",
}


@pytest.mark.parametrize("bug", sorted(DIAGNOSED))
def test_an_fbi_support_that_differs_says_which_decision_differed(shapes_paper_ref, shapes_half_k_ref, bug):
    ref = shapes_half_k_ref if PLANTED[bug][1] == "halfk" else shapes_paper_ref
    result = compare(ref, torch_port.run(ref, torch.float32, (bug,), methods=("fbi",)))
    first = result.rows[[row.key for row in result.rows].index(result.first_divergence)]
    assert DIAGNOSED[bug] in first.note, first.note


def test_a_torch_native_port_passes_with_its_own_flatten_order(keras_ref):
    """A port that uses its network as torch has it: flatten in (C, H, W) order, and fc1's kernel rows in that
    order (as torchvision's classifier.0 holds them). Its act/flatten and walks' flatten vectors are read as such."""
    h, w, c = keras_ref["act/block3_pool"].shape[1:]
    kernel = keras_ref["w/fc1/kernel"]  # rows in (H, W, C) order
    torch_rows = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    as_torch = {**keras_ref, "w/fc1/kernel": torch_rows}
    methods = ("gradient", "guided_backprop")  # autograd's walks: consistent with its forward flatten (the port's
    # hand-written FBI walk un-flattens in Keras's order, and would be wrong here)
    port = torch_port.run(as_torch, torch.float32, ("flatten_chw",), methods=methods)  # torch's flatten: no bug here
    result = compare(keras_ref, port, methods=methods)
    assert result.passed and result.flatten_order == "chw", format_comparison(result)


def test_a_correct_port_passes_on_a_model_given_by_path(tmp_path_factory, shapes_images):
    """The reference of a model file (not a name) stores its weights, so that compare replays its near ties: a
    correct port used to fail here (attr/smoothgrad, 2.5e-4 of the scale) when the file was not repeated."""
    from importlib.resources import files
    folder = tmp_path_factory.mktemp("bypath")
    path = folder / "shapes_copy.h5"
    path.write_bytes((files("fbi_ref.io.embedded") / "shapes.h5").read_bytes())
    ref_path = folder / "ref.npz"
    assert main(["reference", "--model", str(path), "--images", *map(str, shapes_images[0]), *FAST, "--preset", "paper",
                 "--out", str(ref_path), "-q"]) == 0  # by path the file has no manifest: the paper's tau = 10
    # absolute would empty FBI
    path.unlink()
    ref = load_npz(ref_path)
    assert "w/fc1/kernel" in ref
    result = compare(ref, torch_port.run(ref, torch.float32))
    assert result.passed and result.replay_note == "", format_comparison(result)


def test_a_correct_float64_port_passes_where_fbi_copies_forward_values_into_a_small_walk(tmp_path_factory,
                                                                                        shapes_images):
    """FBI with the contrast start, no image mask and top-k at the top (the options issue 28's selection
    chooses): un-pooling's min(a_p, g) copies activations into a walk ~1e-4 of their scale. Measured before the
    replay walked FBI on the port's own forward values: this float64 port failed by 4.2e-4 of the scale on one
    element of fbi/backward/block1_conv2 (image 7)."""
    options = [item for name, value in (("k", "0.05"), ("tau", "0.05"), ("tau_mode", "relative"),
                                        ("start", "contrast"), ("dense_bias", "ignore"), ("mask_dense", "false"),
                                        ("mask_image", "false"), ("topk_layers", "top"))
               for item in ("--option", f"fbi.{name}={value}")]
    ref = reference(tmp_path_factory, "copying", "--model", "shapes", "--images", *shapes_images[0], "--methods", "fbi",
                    *options)
    for dtype in (torch.float32, torch.float64):
        result = compare(ref, torch_port.run(ref, dtype, methods=("fbi",)))
        assert result.passed, format_comparison(result)
