"""The fbi-ref command line: every command's output files hold what they claim; bad input gives one line, exit 2.

Most runs call fbi_ref.cli.program in-process (fast, and an uncaught exception would fail the test just as a
traceback would); a few run the real console entry point in a subprocess.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fbi_ref
from fbi_ref.io import weights_cache as fetch
from fbi_ref.cli import main
from fbi_ref.figures import CELL, DPI
from fbi_ref.figures import GALLERY_CELL
from fbi_ref.io.zoo import EMBEDDED_DIR

from .cli_helpers import ctrl_c_as_a_terminal_sends_it

SHAPES_MODEL = EMBEDDED_DIR / "shapes.h5"


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """An empty weights cache, so no test depends on (or touches) the user's."""
    monkeypatch.setenv("FBI_REF_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model_path(keras_fixtures):
    return str(keras_fixtures / "small_vgg_k3.keras")


@pytest.fixture
def images(tmp_path):
    """A folder with two small RGB images of different sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (30, 40)), ("b.jpg", (50, 45))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def call(capsys, *args):
    """Run the command line in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run(*args):
    """Run `python -m fbi_ref.cli` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "fbi_ref.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def png_size(path):
    """The (width, height) of a PNG file."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def inches(*sizes):
    """Figure inches to pixels, as matplotlib rounds them."""
    return tuple(round(s * DPI) for s in sizes)


# --- entry points, help ----------------------------------------------------------------------

def test_version_through_the_module_and_the_console_script():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fbi-ref {fbi_ref.__version__}"
    script = Path(sys.executable).parent / "fbi-ref"
    if script.exists():  # installed with pip install -e
        assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout == result.stdout


@pytest.mark.parametrize("command", ["", "demo", "explain", "layers", "sweep", "reference", "compare", "weights",
                                     "weights fetch", "weights list", "weights verify"])
def test_every_command_help_shows_an_example(capsys, command):
    code, out, _ = call(capsys, *command.split(), "--help")
    assert code == 0 and "example" in out and out.startswith("usage: fbi-ref")


# --- figure commands -------------------------------------------------------------------------

def test_explain_writes_one_table1_figure_per_image_of_a_folder(capsys, model_path, images, tmp_path):
    out_dir = tmp_path / "out"
    code, out, _ = call(capsys, "explain", images, "--model", model_path, "--method", "fbi,guided_backprop",
                        "--tau", "0", "--out", out_dir)
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_explain.png", "b_explain.png"]
    assert png_size(out_dir / "a_explain.png") == inches(CELL * 3, CELL + 0.6)  # input + 2 methods
    assert "a.png: predicted class" in out and str(out_dir / "a_explain.png") in out


def test_explain_save_npz_holds_the_raw_arrays(capsys, model_path, images, tmp_path):
    code, _, _ = call(capsys, "explain", images / "a.png", "--model", model_path, "--method", "gradient,gradcam",
                      "--target", "4", "--out", tmp_path, "--save-npz", "-q")
    assert code == 0 and capsys.readouterr().out == ""
    with np.load(tmp_path / "a_explain.npz") as data:
        assert data["x"].shape == (1, 32, 32, 3) and data["target"].tolist() == [4]
        assert data["attr/gradient"].shape == (1, 32, 32, 3) and data["heatmap/gradcam"].shape == (1, 32, 32)
        np.testing.assert_allclose(data["probs"].sum(), 1, rtol=1e-5)
        assert json.loads(str(data["meta"]))["methods"]["gradcam"] == {"layer": "block3_conv2"}  # resolved: the last conv


def test_explain_names_outputs_apart_when_two_images_share_a_name(capsys, model_path, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes((images / "a.png").read_bytes())
    code, _, _ = call(capsys, "explain", images / "a.png", other / "a.png", "--model", model_path, "--method",
                      "gradient", "--out", tmp_path / "out")
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_2_explain.png", "a_explain.png"]


def test_explain_timings_say_when_explaining_started_after_the_process_start(model_path, images, tmp_path):
    result = run("explain", images / "a.png", "--model", model_path, "--method", "fbi", "--out", tmp_path,
                 "--timings", "-q")
    assert result.returncode == 0 and result.stdout == ""
    words = result.stderr.split("a.png: explaining started ")[1].split()
    started, took = float(words[0]), float(words[words.index("took") + 1])
    assert 0 < started < 60 and 0 < took < 60  # seconds since this subprocess started, not since the epoch


@pytest.mark.slow
def test_the_first_run_with_an_empty_numba_cache_says_that_it_compiles(tmp_path, model_path, images):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty")}
    command = [sys.executable, "-m", "fbi_ref.cli", "explain", images / "a.png", "--model", model_path,
               "--method", "fbi", "--out", tmp_path]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0
    assert first.stderr.count("compiling the numba kernels, once") == 1
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)  # the cache is warm
    assert second.returncode == 0 and "compiling" not in second.stderr


def test_layers_draws_a_row_per_position_of_the_walk(capsys, model_path, images, tmp_path):
    out = tmp_path / "layers.png"
    code, stdout, _ = call(capsys, "layers", images / "a.png", "--model", model_path, "--tau", "none", "--maps", "3",
                           "--out", out)
    assert code == 0 and stdout.strip() == f"wrote {out}"
    positions = len(fbi_ref.load_model(model_path).layers) + 1  # every layer's output and the input
    assert png_size(out) == inches(GALLERY_CELL * 4 + 0.8, GALLERY_CELL * positions + 0.8)


def test_sweep_draws_a_grid_of_k_by_tau(capsys, model_path, images, tmp_path):
    out = tmp_path / "sweep.png"
    code, _, _ = call(capsys, "sweep", images / "a.png", "--model", model_path, "--k", "0.25,1.0", "--tau",
                      "-inf,0,10", "--out", out)
    assert code == 0 and png_size(out) == inches(CELL * 4, CELL * 2 + 0.6)


def test_demo_explains_shapes_images_with_any_square_model(capsys, model_path, tmp_path):
    out = tmp_path / "demo.png"
    code, stdout, _ = call(capsys, "demo", "--model", model_path, "--n", "3", "--out", out)
    assert code == 0 and stdout.strip() == f"wrote {out}"
    assert png_size(out) == inches(CELL * 6, CELL * 3 + 0.6)  # input + 5 methods, 3 rows


def test_demo_with_nothing_downloaded_uses_the_embedded_shapes_model(tmp_path):
    out = tmp_path / "demo.png"
    result = run("demo", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}" and png_size(out) == inches(CELL * 6, CELL * 6 + 0.6)


def test_demo_without_the_embedded_model_says_so_in_one_line(capsys, tmp_path, monkeypatch):
    from fbi_ref.io import zoo
    monkeypatch.setattr(zoo, "EMBEDDED_DIR", tmp_path / "no-weights-here")  # a checkout without weights/
    code, _, err = call(capsys, "demo", "--out", tmp_path / "demo.png")
    assert code == 2 and err.count("\n") == 1 and "'shapes' model is not in" in err


@pytest.fixture
def embedded_shapes(tmp_path, monkeypatch):
    """A stand-in embedded 'shapes' model (the Shapes architecture, random weights) in its own weights folder."""
    from fbi_ref.io import zoo
    from fbi_ref.nn.architectures import random_weights
    from fbi_ref.io.keras_files import write_keras_weights
    from fbi_ref.shapes import CLASSES
    from fbi_ref.shapes.train import shapes_architecture
    folder = tmp_path / "weights"
    folder.mkdir()
    write_keras_weights(random_weights(shapes_architecture(), seed=0), folder / "shapes.h5")
    sha = hashlib.sha256((folder / "shapes.h5").read_bytes()).hexdigest()
    (folder / "shapes.json").write_text(json.dumps({"class_names": list(CLASSES), "sha256": sha}))
    monkeypatch.setattr(zoo, "EMBEDDED_DIR", folder)
    return folder


def test_demo_and_explain_name_the_classes_of_an_embedded_model(capsys, embedded_shapes, images, tmp_path):
    code, _, _ = call(capsys, "demo", "--n", "2", "--out", tmp_path / "demo.png")
    assert code == 0 and png_size(tmp_path / "demo.png") == inches(CELL * 6, CELL * 2 + 0.6)
    code, out, _ = call(capsys, "explain", images / "a.png", "--model", "shapes", "--target", "ring", "--method",
                        "gradient", "--out", tmp_path)
    assert code == 0 and "a.png: predicted " in out and out.split(": predicted ")[1].split(" ")[0] in \
        ("circle", "square", "triangle", "cross", "star", "ring")


# --- weights ---------------------------------------------------------------------------------

def test_weights_list_shows_every_known_file_and_the_embedded_models(capsys):
    code, out, _ = call(capsys, "weights", "list", "--json")
    record = json.loads(out)
    official = [m for m in record["models"] if m["kind"] == "official"]
    assert code == 0 and [m["name"] for m in official] == list(fetch.KNOWN_WEIGHTS)
    assert all(m["status"] == "missing" and m["md5"] is None for m in official)
    embedded = [m for m in record["models"] if m["kind"] == "embedded"]
    assert all(m["status"] == "ok" and len(m["sha256"]) == 64 for m in embedded)
    code, out, _ = call(capsys, "weights", "list", "-q")
    assert out.split() == [m["name"] for m in embedded]
    code, out, _ = call(capsys, "weights", "list")
    assert "fbi-ref weights fetch vgg16" in out


def test_weights_list_and_verify_check_embedded_models_against_their_manifest(capsys, embedded_shapes):
    code, out, _ = call(capsys, "weights", "list", "-q")
    assert code == 0 and out.split() == ["shapes"]
    assert call(capsys, "weights", "verify", "shapes")[0] == 0
    manifest = embedded_shapes / "shapes.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "sha256": "0" * 64}))
    code, out, _ = call(capsys, "weights", "verify", "shapes")
    assert code == 1 and "MISMATCH: expected sha256 " + "0" * 64 in out
    assert json.loads(call(capsys, "weights", "list", "--json")[1])["models"][-1]["status"] == "MISMATCH"


def test_weights_verify_prints_hashes_and_checks_known_files(capsys, model_path, tmp_path):
    data = Path(model_path).read_bytes()
    code, out, _ = call(capsys, "weights", "verify", model_path, "--json")
    record = json.loads(out)
    assert code == 0 and record["md5"] == hashlib.md5(data).hexdigest()
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and "ok" not in record
    impostor = tmp_path / fetch.KNOWN_WEIGHTS["vgg16"].filename
    impostor.write_bytes(b"not the weights")
    code, out, _ = call(capsys, "weights", "verify", impostor)
    assert code == 1 and "MISMATCH: expected md5 64373286793e3c8b2b4e3219cbf3544b" in out


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, *args):
        """Keep stderr for the command's own output."""


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_weights_fetch_checks_the_md5_and_keeps_nothing_on_a_mismatch(capsys, http_folder):
    folder, url = http_folder
    (folder / "vgg16.h5").write_bytes(os.urandom(5000))
    code, _, err = call(capsys, "weights", "fetch", "vgg16", "--url", f"{url}/vgg16.h5", "-q")
    assert code == 2 and err.count("\n") == 1 and "checksum mismatch" in err
    assert not fetch.weights_dir().exists() or not any(fetch.weights_dir().iterdir())


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_takes_its_own_arguments(capsys):
    code, out, err = call(capsys, "evaluate", "--help")
    assert code == 0 and out.startswith("usage: fbi-ref evaluate") and "--n-test" in out


# --- bad arguments and files -----------------------------------------------------------------

@pytest.fixture
def bad_files(tmp_path, images):
    """Files that are not what they claim to be."""
    (tmp_path / "garbage.h5").write_text("not hdf5")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "text.npz").write_text("not numpy")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "small.npy", np.zeros((2, 5, 5, 3), np.float32))
    return tmp_path


BAD = [
    (["nonsense"], "invalid choice"),
    (["explain"], "required: IMAGE"),
    (["explain", "{d}/missing.png", "--model", "{m}"], "no such file"),
    (["explain", "{img}", "--model", "{d}/missing.h5"], "no such file"),
    (["explain", "{img}", "--model", "{d}/garbage.h5"], "not a readable Keras"),
    (["explain", "{img}", "--model", "vgg16"], "fbi-ref weights fetch vgg16"),
    (["explain", "{d}/text.png", "--model", "{m}"], "not an image file"),
    (["explain", "{d}/empty", "--model", "{m}"], "no image files"),
    (["explain", "{img}", "--model", "{m}", "--method", "nope"], "unknown method"),
    (["explain", "{img}", "--model", "{m}", "--target", "cat"], "unknown target"),
    (["explain", "{img}", "--model", "{m}", "--target", "99"], "out of range"),
    (["explain", "{img}", "--model", "{m}", "--k", "abc"], "not a number"),
    (["explain", "{img}", "--model", "{m}", "--k", "0"], "at least 1"),
    (["explain", "{img}", "--model", "{m}", "--option", "fbi.nope=1"], "takes no option"),
    (["explain", "{img}", "--model", "{m}", "--option", "gradcam.layer=x", "--method", "fbi"], "not among"),
    (["explain", "{img}", "--model", "{m}", "--k", "0.3", "--method", "gradient"], "fbi is not among"),
    (["explain", "{img}", "--model", "{m}", "--out", "{d}/a_file"], "a file is in the way"),
    (["layers", "{img}", "--model", "{m}", "--maps", "0"], "at least 1"),
    (["layers", "{img}", "--model", "{m}", "--out", "{d}/layers.xyz"], "ending in one of"),
    (["sweep", "{img}", "--model", "{m}", "--k", ","], "no numbers"),
    (["demo", "--model", "{m}", "--n", "x"], "not an integer"),
    (["reference", "--model", "{m}"], "--inputs --images is required"),
    (["reference", "--model", "{m}", "--inputs", "{d}/missing.npy"], "no such file"),
    (["reference", "--model", "{m}", "--inputs", "{d}/text.npz"], "not a NumPy"),
    (["reference", "--model", "{m}", "--inputs", "{d}/small.npy"], "expects (N, 32, 32, 3)"),
    (["compare", "{d}/missing.npz", "{d}/text.npz"], "no such file"),
    (["compare", "{d}/text.npz", "{d}/text.npz"], "not a NumPy"),
    (["compare", "{d}/text.npz", "{d}/text.npz", "--layout", "chw"], "invalid choice"),
    (["weights", "fetch", "vgg99"], "invalid choice"),
    (["weights", "verify", "{d}/missing.h5"], "no such file"),
    (["weights", "verify", "vgg16"], "fbi-ref weights fetch vgg16"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_and_files_give_one_line_and_exit_2(capsys, bad_files, images, model_path, args, message):
    names = {"d": bad_files, "m": model_path, "img": images / "a.png"}
    code, out, err = call(capsys, *[a.format(**names) for a in args])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fbi-ref") and message in err, err


def test_bad_input_in_a_real_process_gives_one_line_and_no_traceback(bad_files, model_path):
    for args in (["explain", bad_files / "text.png", "--model", model_path], ["compare", "x.npz", "y.npz"],
                 ["explain", "--k"]):
        result = run(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.02, 0.1, 0.2, 0.3, 0.5, 0.8])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line_and_exit_130(small, image, tmp_path, delay):
    command = [sys.executable, "-m", "fbi_ref.cli", "explain", image, "--model", small, "--out", tmp_path]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_as_a_terminal_sends_it)
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    if "_explain.png" in out:  # the work was done before the signal came (0), or it came during the
        assert child.returncode in (0, -signal.SIGINT) and err == ""  # interpreter's exit, which it ends silently
        return
    if "KeyboardInterrupt" in err and "fbi_ref/cli" not in err:
        # It came while Python itself started (~20 ms: site, runpy, the package's short __init__), before the
        # command line's first line: Python's own default (a traceback, and exit 1 when it hit runpy's import),
        # which no program can change; docs/cli.md says so. test_ctrl_c_waiting_... covers the moment after.
        assert child.returncode in (1, -signal.SIGINT) and err.rstrip().endswith("KeyboardInterrupt"), err
        return
    assert child.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fbi-ref") and "interrupted" in err


def ctrl_c_waiting_from_the_start():
    """For Popen(preexec_fn=...): SIGINT as a terminal sends it, but blocked, so one sent at once waits until
    the program unblocks it; the start-up's race, made certain."""
    ctrl_c_as_a_terminal_sends_it()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks on this OS (Windows)")
def test_ctrl_c_waiting_while_the_program_loads_is_one_line_and_exit_130(small, image, tmp_path):
    command = [sys.executable, "-m", "fbi_ref.cli", "explain", image, "--model", small, "--out", tmp_path]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=ctrl_c_waiting_from_the_start)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130 and err == "fbi-ref: interrupted\n" and out == "", (child.returncode, err)


def test_methods_lists_every_method_and_option_from_the_records(capsys):
    from fbi_ref.methods.catalog import METHODS
    code, out, err = call(capsys, "methods")
    assert code == 0 and err == ""
    for name, record in METHODS.items():
        assert f"{name} ({record.label};" in out
        for option in record.options:
            assert f"  {option.name:<14} = {option.default!s:<14}" in out, (name, option.name)
    code, out, err = call(capsys, "methods", "fbi", "--json")
    records = json.loads(out)["methods"]
    assert code == 0 and [r["name"] for r in records] == ["fbi"]
    assert [o["name"] for o in records[0]["options"]] == [o.name for o in METHODS["fbi"].options]
    assert records[0]["options"][3]["choices"] == ["maxmin", "onehot", "logits", "contrast"]
    code, out, err = call(capsys, "methods", "nope")
    assert code == 2 and out == "" and "unknown method 'nope'" in err and err.count("\n") == 1
