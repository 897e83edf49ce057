"""Whole data sets: streamed, resumable batch runs of explain and reference, Dask, and the VOC pointing game.

Everything runs for real: the command line in subprocesses killed with SIGKILL and SIGINT mid-run, a Dask
LocalCluster of 2 worker processes, a VOC-style folder written by the Shapes generator.
"""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbi_ref.cli import main
from fbi_ref.evaluation import voc
from fbi_ref.io.arrays import load_npz
from fbi_ref.io.weights_cache import sha256sum
from fbi_ref.reference.shards import INDEX, open_reference, read_index
from fbi_ref.shapes import CLASSES, generate
from fbi_ref.shapes.voc import write_voc

from .cli_helpers import ctrl_c_as_a_terminal_sends_it

METHODS = "fbi,gradient,gradcam"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 10 Shapes images (PNG)."""
    folder = tmp_path_factory.mktemp("images")
    for i, image in enumerate(generate(10, seed=3, kind="distractor").images):
        Image.fromarray(image).save(folder / f"im{i:03d}.png")
    return folder


def cli(args):
    """Run the command line in this process with every argument as text; the exit code."""
    return main([str(a) for a in args])


def command(*args):
    """The fbi-ref command line as a subprocess argument list."""
    return [sys.executable, "-m", "fbi_ref.cli", *map(str, args)]


def reference_args(images, out, *extra):
    """`fbi-ref reference` on the Shapes images with the embedded model, 1 thread per batch."""
    return ["reference", "--model", "shapes", "--images", images, "--methods", METHODS, "--threads", "1",
            "--out", out, "-q", *extra]


def same_arrays(a, b):
    """Keys in the same order and every array the same dtype, shape and bytes."""
    assert list(a) == list(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key


def shard_hashes(folder):
    """{shard file: sha256} of a finished reference folder, from its index."""
    return {s["file"]: s["sha256"] for s in read_index(folder)["shards"]}


# --- streaming and shards ----------------------------------------------------------------------

def test_a_streamed_reference_has_the_same_bytes_as_the_single_file_run_and_compares_as_one(images, tmp_path,
                                                                                             capsys):
    assert cli(reference_args(images, tmp_path / "ref.npz", "--batch-size", "4")) == 0
    assert cli(reference_args(images, tmp_path / "refdir", "--batch-size", "4")) == 0
    index = read_index(tmp_path / "refdir")
    assert index["complete"] and [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 4), (4, 8), (8, 10)]
    assert all(sha256sum(tmp_path / "refdir" / s["file"]) == s["sha256"] for s in index["shards"])
    with open_reference(tmp_path / "refdir") as folder:
        same_arrays(load_npz(tmp_path / "ref.npz"), folder)
        assert json.loads(str(folder["meta"]))["batches"] == {"size": 4, "count": 3}
    capsys.readouterr()
    assert cli(["compare", tmp_path / "refdir", tmp_path / "ref.npz", "-q"]) == 0


def test_without_batch_options_the_single_file_is_what_it_always_was(images, tmp_path):
    assert cli(["reference", "--model", "shapes", "--images", images, "--methods", METHODS, "--out",
                 tmp_path / "new.npz", "-q"]) == 0
    meta = json.loads(str(load_npz(tmp_path / "new.npz")["meta"]))
    assert "batches" not in meta and load_npz(tmp_path / "new.npz")["x"].shape[0] == 10


def test_a_list_file_names_the_images_in_its_order(images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images / 'im003.png'}\n\n{images / 'im001.png'}\n")
    assert cli(reference_args(listing, tmp_path / "r.npz", "--batch-size", "1")) == 0
    from fbi_ref.io.images import preprocess_image
    x = load_npz(tmp_path / "r.npz")["x"]
    assert np.array_equal(x[0], preprocess_image(images / "im003.png", (64, 64, 3))[0])


def test_an_unfinished_folder_is_refused_by_compare_and_other_settings_by_resume(images, tmp_path, capsys):
    assert cli(reference_args(images, tmp_path / "d", "--batch-size", "4")) == 0
    index = read_index(tmp_path / "d")
    index["complete"], index["shards"] = False, index["shards"][:1]
    (tmp_path / "d" / INDEX).write_text(json.dumps(index))
    capsys.readouterr()
    assert cli(["compare", tmp_path / "d", tmp_path / "d"]) == 2
    assert "unfinished reference (4 of 10 images)" in capsys.readouterr().err
    assert cli(reference_args(images, tmp_path / "d", "--batch-size", "5", "--resume")) == 2
    err = capsys.readouterr().err
    assert "other settings (batch_size differ)" in err and len(err.strip().splitlines()) == 1


def test_explain_in_batches_resumes_from_its_index(images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["explain", images, "--model", "shapes", "--method", "gradient", "--batch-size", "4", "--out", out, "-q"]
    assert cli(args) == 0
    index = json.loads((out / "explain-index.json").read_text())
    assert len(index["done"]) == 10 and len(list(out.glob("*_explain.png"))) == 10
    (out / "im004_explain.png").unlink()  # as if the run had been killed before this one
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    capsys.readouterr()
    assert cli(args[:-1] + ["--resume"]) == 0
    assert "resuming: 9 of 10 images already explained" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert {k for k in after if after[k] != before.get(k)} == {"im004_explain.png"}


@pytest.mark.parametrize("index", ['{"site": "my web site"}', '{"format": "fbi_ref reference shards", "shards": []}'])
def test_reference_never_writes_into_a_folder_whose_index_is_not_its_own(images, tmp_path, capsys, index):
    """A folder with anybody's index.json (a web site's; or ours without a run) and files named like our shards:
    both are left as they are and the run is refused (the old code overwrote the index and deleted the shards)."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "index.json").write_text(index)
    (folder / "shard-00000.npz").write_bytes(b"the user's own file")
    capsys.readouterr()
    assert cli(reference_args(images, folder, "--batch-size", "5")) == 2
    err = capsys.readouterr().err
    assert "give a new or empty folder" in err and err.count("\n") == 1
    assert (folder / "index.json").read_text() == index
    assert (folder / "shard-00000.npz").read_bytes() == b"the user's own file"


FINETUNES = Path(__file__).resolve().parent / "fixtures" / "finetunes"


def test_explain_resume_refuses_a_model_file_replaced_at_the_same_path(images, tmp_path, capsys):
    """The run records the model file's SHA-256 (as reference's does): another model at the same path is another
    run, not one to continue (the old figures were kept, exit 0)."""
    model, out = tmp_path / "model.keras", tmp_path / "out"
    shutil.copy(FINETUNES / "ft_gap.keras", model)
    args = ["explain", images, "--model", model, "--method", "gradient", "--batch-size", "4", "--out", out, "-q"]
    assert cli(args) == 0
    shutil.copy(FINETUNES / "ft_pools.keras", model)
    capsys.readouterr()
    assert cli(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "model_sha256 differ" in err and err.count("\n") == 1


def test_an_explain_index_whose_entry_is_not_a_record_is_one_line(images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["explain", images, "--model", "shapes", "--method", "gradient", "--batch-size", "4", "--out", out, "-q"]
    assert cli(args) == 0
    index = json.loads((out / "explain-index.json").read_text())
    index["done"]["im000_explain.png"] = "a string"
    (out / "explain-index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert cli(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "not an index of fbi-ref explain" in err and err.count("\n") == 1


def stop_mid_run(folder, count, process, timeout=120):
    """Freeze the run (SIGSTOP) once its index lists `count` shards. It looks at the index only while the run is
    stopped, so however late this process gets the CPU, the run cannot end between the look and the signal."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        process.send_signal(signal.SIGSTOP)
        assert process.poll() is None, process.communicate()  # the run ended before `count` shards were seen
        try:
            if len(read_index(folder)["shards"]) >= count:
                return
        except Exception:  # not written yet
            pass
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    process.send_signal(signal.SIGCONT)
    pytest.fail("the run did not get far enough")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(images, tmp_path, how):
    many = tmp_path / "many.txt"  # 40 images, 20 batches of 2: long enough to be killed in the middle
    many.write_text("\n".join(str(images / f"im{i % 10:03d}.png") for i in range(40)))
    folder = tmp_path / "refdir"
    process = subprocess.Popen(command(*reference_args(many, folder, "--batch-size", "2")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_a_terminal_sends_it)
    stop_mid_run(folder, 3, process)
    process.send_signal(how)  # delivered when the stopped run goes on (SIGKILL at once)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=60)
    if how == signal.SIGINT:
        assert process.returncode == 130 and err.strip() == "fbi-ref reference: error: interrupted", err
    else:
        assert process.returncode == -signal.SIGKILL
    index = read_index(folder)
    assert 3 <= len(index["shards"]) < 20 and not index["complete"]
    for shard in index["shards"]:  # every shard the index lists is complete: its recorded hash holds
        assert sha256sum(folder / shard["file"]) == shard["sha256"]
    assert subprocess.run(command(*reference_args(many, folder, "--batch-size", "2", "--resume")),
                          capture_output=True, timeout=300).returncode == 0
    assert cli(reference_args(many, tmp_path / "whole.npz", "--batch-size", "2")) == 0
    with open_reference(folder) as resumed:
        same_arrays(load_npz(tmp_path / "whole.npz"), resumed)
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


# --- Dask ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_local_dask_cluster_writes_the_same_shards_as_the_serial_run(images, tmp_path):
    pytest.importorskip("distributed")
    assert cli(reference_args(images, tmp_path / "serial", "--batch-size", "4")) == 0
    assert cli(reference_args(images, tmp_path / "dask", "--batch-size", "4", "--scheduler", "local",
                               "--jobs", "2")) == 0
    assert cli(reference_args(images, tmp_path / "pool", "--batch-size", "4", "--jobs", "2")) == 0
    assert shard_hashes(tmp_path / "serial") == shard_hashes(tmp_path / "dask") == shard_hashes(tmp_path / "pool")


@pytest.mark.slow
def test_the_pointing_game_on_a_local_dask_cluster_equals_the_serial_run(voc_folder, tmp_path):
    pytest.importorskip("distributed")
    common = ["evaluate", "--dataset", voc_folder, "--methods", "gradient,gradcam,centre", "--bootstrap", "100",
              "-q", "--threads", "1"]
    assert cli(common + ["--out", tmp_path / "serial", "--jobs", "1"]) == 0
    assert cli(common + ["--out", tmp_path / "dask", "--scheduler", "local", "--jobs", "2"]) == 0
    serial, dask = (json.loads((tmp_path / d / "pointing.json").read_text()) for d in ("serial", "dask"))
    assert serial["all"] == dask["all"]


def test_without_dask_a_scheduler_is_a_one_line_error_naming_the_extra(images, tmp_path):
    # dask.distributed made unimportable in a fresh interpreter: what a machine without the extra sees
    code = ("import sys; sys.modules['distributed'] = None; from fbi_ref.cli import main; "
            f"sys.exit(main({[str(a) for a in reference_args(images, tmp_path / 'd', '--scheduler', 'local')]!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pip install 'fbi_ref[dask]'" in result.stderr and not (tmp_path / "d").exists()


# --- the pointing game on a VOC-style folder ------------------------------------------------------

@pytest.fixture(scope="module")
def voc_folder(tmp_path_factory):
    """24 Shapes images as a VOC-style folder (12 two-object images, 12 with distractors)."""
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, n=24, seed=7)
    return root


def hand_centre_score(root):
    """The centre baseline's score computed from the XML boxes alone: a hit when the squared distance from
    (H // 2, W // 2) to the nearest pixel of a box of the class is below 15^2."""
    import xml.etree.ElementTree as ET
    per_class = {}
    for image_id in (root / "ImageSets/Main/test.txt").read_text().split():
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
        h, w = int(tree.findtext("size/height")), int(tree.findtext("size/width"))
        cy, cx = h // 2, w // 2
        boxes = {}
        for obj in tree.findall("object"):
            b = [int(obj.findtext(f"bndbox/{k}")) - 1 for k in ("xmin", "ymin", "xmax", "ymax")]
            boxes.setdefault(obj.findtext("name"), []).append((b, obj.findtext("difficult") == "1"))
        for name, items in boxes.items():
            if all(d for _, d in items):
                continue
            d2 = min(max(x0 - cx, 0, cx - x1) ** 2 + max(y0 - cy, 0, cy - y1) ** 2 for (x0, y0, x1, y1), _ in items)
            per_class.setdefault(name, []).append(d2 < 15 ** 2)
    return float(np.mean([np.mean(v) for v in per_class.values()])), sum(map(len, per_class.values()))


def test_the_voc_reader_finds_every_pair_and_skips_all_difficult_classes(voc_folder):
    data = voc.read_dataset(voc_folder)
    pairs = voc.pointing_pairs(data, CLASSES)
    difficult = sum(obj.difficult for a in data.annotations for obj in a.objects)
    assert len(data.annotations) == 24 and difficult == 4  # every 5th image: its first object
    assert len(pairs) == 12 * 2 + 12 - difficult


def test_a_map_that_is_the_ground_truth_mask_scores_one(tmp_path):
    truth = write_voc(tmp_path, n=12, seed=7)
    data = voc.read_dataset(tmp_path)
    pairs = voc.pointing_pairs(data, CLASSES)
    points = [voc.peak_point(dict(truth[data.annotations[a].image_id])[CLASSES[k]].astype(float),
                             (data.annotations[a].height, data.annotations[a].width)) for a, k in pairs]
    hits = voc.hits_of(data, pairs, points, CLASSES)
    assert voc.class_scores(hits, [k for _, k in pairs], len(CLASSES))[1] == 1.0


def test_the_disc_is_strictly_within_15_pixels_of_the_point():
    mask = np.zeros((60, 60), dtype=bool)
    mask[30, 45] = True
    assert voc.is_hit(mask, (30, 31)) and not voc.is_hit(mask, (30, 30))  # 14 px: hit, 15 px: not
    mask[:] = False
    mask[39, 42] = True  # 9^2 + 12^2 = 15^2 exactly: not a hit
    assert not voc.is_hit(mask, (30, 30))


def annotation(box, size=64):
    """A VOC annotation of one circle with `box` (xmin, ymin, xmax, ymax) in a size x size image."""
    x0, y0, x1, y1 = box
    return (f"<annotation><filename>p00000.png</filename><size><width>{size}</width><height>{size}</height></size>"
            f"<object><name>circle</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")


UTF16_ENTITY = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY c "circle">]>'
                '<annotation>&c;</annotation>').encode("utf-16")


@pytest.mark.parametrize("xml, says", [
    ('<!DOCTYPE a [<!ENTITY x "y">]><annotation>&x;</annotation>', "declares a DTD or entities"),
    (UTF16_ENTITY, "declares a DTD or entities"),  # the byte check cannot see it: expat's handler does
    ("<annotation><size><width>3</width></size></annotation>", "not a VOC annotation"),
    ("<annotation", "not valid XML"),
    (annotation((-20, -20, -5, -5)), "lies outside the 64 x 64 image"),  # negative: would count from the end
    (annotation((100, 100, 200, 200)), "lies outside the 64 x 64 image"),
    (annotation((1, 1, 5, 5), size=200000), "is not within 1..16384"),  # a 298 GiB mask otherwise
    (annotation(("inf", 1, 5, 5)), "not a VOC annotation"),  # a traceback (OverflowError) before
    (annotation((1, 1, "1e400", 5)), "not a VOC annotation"),
    ('<?xml version="1.0" encoding="x-no-such-encoding"?><annotation/>', "not valid XML"),
])
def test_bad_annotations_are_one_line_errors(voc_folder, tmp_path, capsys, xml, says):
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(voc_folder, root)
    target = root / "Annotations" / "p00000.xml"
    target.write_bytes(xml) if isinstance(xml, bytes) else target.write_text(xml)
    assert cli(["evaluate", "--dataset", root, "--methods", "centre", "--out", tmp_path / "o", "-q"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_the_pointing_game_end_to_end_with_a_subset_and_the_centre_by_hand(voc_folder, tmp_path, capsys):
    subset = tmp_path / "subset.txt"
    subset.write_text("p00001 circle\np00001 ring\n")  # whichever of them p00001 holds
    code = cli(["evaluate", "--dataset", voc_folder, "--methods", "fbi,gradient,gradcam,guided_backprop,centre",
                 "--subset", subset, "--out", tmp_path / "out", "--bootstrap", "200", "-q", "--jobs", "1"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "pointing.json").read_text())
    centre, pairs = hand_centre_score(voc_folder)
    assert result["pairs"] == pairs and result["all"]["centre"]["score"] == pytest.approx(centre, abs=1e-12)
    for method, s in result["all"].items():
        assert s["interval"][0] <= s["score"] <= s["interval"][1], method
    # The objects are placed anywhere, so the centre is a weak baseline: the trained model's FBI and guided
    # backprop point at them far more often (their whole intervals above the centre's). Grad-CAM's map is the
    # 4 x 4 block5 grid of a 64 px model, too coarse to choose between two objects: it does not (docs/datasets.md).
    for method in ("fbi", "guided_backprop"):
        assert result["all"][method]["interval"][0] > result["all"]["centre"]["interval"][1], method
    data = voc.read_dataset(voc_folder)
    held = {CLASSES[k] for a, k in voc.pointing_pairs(data, CLASSES) if data.annotations[a].image_id == "p00001"}
    kept = len(held & {"circle", "ring"})  # TorchRay's rule: an image the subset lists keeps only its listed pairs
    assert result["subset_pairs"] == pairs - len(held) + kept and result["subset"]["centre"]["pairs"] == result["subset_pairs"]
    assert "| centre |" in (tmp_path / "out" / "pointing.md").read_text()


@pytest.mark.parametrize("which", ["Annotations/p00000.xml", "JPEGImages/p00000.jpg"])
def test_a_symlink_in_a_data_set_is_never_followed(voc_folder, tmp_path, capsys, which):
    """A link at Annotations/ID.xml (or at an image) pointing outside the data set was followed; refused as shard
    folders refuse them. The link points at a copy of the right file: only the rule can refuse it."""
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(voc_folder, root)
    outside = tmp_path / "outside" / Path(which).name
    outside.parent.mkdir()
    shutil.move(root / which, outside)
    (root / which).symlink_to(outside)
    assert cli(["evaluate", "--dataset", root, "--methods", "centre", "--out", tmp_path / "o", "-q"]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and err.count("\n") == 1


def test_pointing_json_is_strict_json(voc_folder, tmp_path):
    """An accuracy that is NaN (a class without pairs) is written as null: NaN is not JSON."""
    from fbi_ref.cli.voc import strict
    assert json.dumps(strict({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"}), allow_nan=False) == \
        '{"a": null, "b": [1.0, null], "c": "x"}'


@pytest.mark.parametrize("image_id", ["../../secret/s", "/etc/passwd", "a/b"])
def test_image_ids_name_files_inside_the_folder(voc_folder, tmp_path, capsys, image_id):
    import shutil
    root = tmp_path / "voc"
    shutil.copytree(voc_folder, root)
    (root / "ImageSets" / "Main" / "test.txt").write_text(f"p00000\n{image_id}\n")
    assert cli(["evaluate", "--dataset", root, "--methods", "centre", "--out", tmp_path / "o", "-q"]) == 2
    err = capsys.readouterr().err
    assert "not a file-name stem" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def shard_folder(images, tmp_path_factory):
    """A complete reference folder of the 10 images in shards of 4."""
    out = tmp_path_factory.mktemp("shards") / "ref"
    assert cli(reference_args(images, out, "--batch-size", "4")) == 0
    return out


def lying(shard_folder, tmp_path, change):
    """A copy of the shard folder whose index is changed by change(index) (shards kept)."""
    import shutil
    folder = tmp_path / "lying"
    shutil.copytree(shard_folder, folder, symlinks=True)
    index = json.loads((folder / INDEX).read_text())
    change(index)
    (folder / INDEX).write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("change, says", [
    (lambda i: i["shards"].pop(1), "do not cover its 10 images"),
    (lambda i: i["shards"].append(dict(i["shards"][0])), "do not cover its 10 images"),
    (lambda i: i.update(images=12), "do not cover its 12 images"),
    (lambda i: i["shards"][0].update(stop=3) or i["shards"][1].update(start=3), "holds 4 images"),
    (lambda i: i["shards"][0].update(file=123), "is not {number, file, start <= stop, sha256}"),
    (lambda i: i["shards"][0].pop("stop"), "is not {number, file, start <= stop, sha256}"),
    (lambda i: i.update(shards=["a", "b"]), "is not {number, file, start <= stop, sha256}"),
])
def test_an_index_that_lies_about_its_shards_is_refused_in_one_line(shard_folder, tmp_path, capsys, change, says):
    folder = lying(shard_folder, tmp_path, change)
    assert cli(["compare", folder, shard_folder]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_symlinked_shard_is_never_read(shard_folder, tmp_path, capsys):
    folder = lying(shard_folder, tmp_path, lambda i: None)
    first = json.loads((folder / INDEX).read_text())["shards"][0]["file"]
    outside = tmp_path / "outside.npz"
    (folder / first).rename(outside)
    (folder / first).symlink_to(outside)  # the same bytes, so its SHA-256 still matches
    assert cli(["compare", folder, shard_folder]) == 2
    assert "does not match its SHA-256" in capsys.readouterr().err


def rewritten_shard(shard_folder, tmp_path, number, change):
    """A copy of the shard folder whose shard `number` holds change(arrays), its SHA-256 updated in the index (a
    consistent folder whose content is wrong, not a damaged one)."""
    from fbi_ref.io.arrays import write_npz
    folder = lying(shard_folder, tmp_path, lambda i: None)
    index = json.loads((folder / INDEX).read_text())
    entry = next(e for e in index["shards"] if e["number"] == number)
    arrays = load_npz(folder / entry["file"])
    (folder / entry["file"]).unlink()
    write_npz(folder / entry["file"], change(arrays))
    entry["sha256"] = sha256sum(folder / entry["file"])
    (folder / INDEX).write_text(json.dumps(index))
    return folder


def with_meta(text):
    def change(arrays):
        arrays["meta"] = np.array(text)
        return arrays
    return change


def narrower_act(arrays):
    key = next(k for k in arrays if k.startswith("act/") and arrays[k].ndim == 4)
    arrays[key] = arrays[key][:, :, :, :-1]
    return arrays


@pytest.mark.parametrize("change, says", [
    (narrower_act, "of shape"),  # np.concatenate's traceback before
    (with_meta("{not json"), "its meta is not JSON"),
    (with_meta('{"near_ties": [1]}'), "meta's 'near_ties' is a JSON array"),
])
def test_a_shard_folder_with_a_wrong_shard_is_one_line(shard_folder, tmp_path, capsys, change, says):
    folder = rewritten_shard(shard_folder, tmp_path, 1, change)
    capsys.readouterr()
    assert cli(["compare", folder, shard_folder]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("consumer", ["fast", "slow"])
def test_a_worker_killed_mid_run_is_one_typed_error_not_a_traceback(consumer):
    """A real worker process dies (SIGKILL): the pool breaks; the run says so in one line (RunError, exit 2 in
    the command line) instead of a BrokenProcessPool traceback, whether the break shows at a result or, when
    the caller is busy with a finished batch, at the next submission (found by a review)."""
    from fbi_ref.errors import RunError
    from fbi_ref.evaluation.workers import stream_tasks
    from .cli_helpers import die_at
    with pytest.raises(RunError, match="a worker process died") as info:
        for _ in stream_tasks(die_at, [(i,) for i in range(8)], jobs=2, threads=1, window=2):
            if consumer == "slow":
                time.sleep(1.0)  # the worker dies meanwhile; the refill's submit meets the broken pool
    assert "\n" not in str(info.value)


@pytest.fixture
def not_dask():
    """A TCP server on 127.0.0.1 that answers anything with a frame header announcing 2**64 - 1 bytes."""
    import socket
    import threading
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                try:
                    connection.sendall(b"\xff" * 64)
                    connection.recv(1024)
                except OSError:
                    pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_scheduler_that_is_not_dask_is_one_line_and_nothing_is_written(images, tmp_path, capsys, not_dask):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(reference_args(images, out, "--batch-size", "5", "--scheduler", not_dask)) == 2
    err = capsys.readouterr().err
    assert "no Dask scheduler answers there" in err and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())
