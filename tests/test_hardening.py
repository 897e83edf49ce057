"""Hostile and careless input: never read outside the named files, never replace what should not be replaced,
never allocate what a header merely declares, never a traceback or a silently wrong result.

One test (or a few) per item of the hardening issue, numbered as there. The command line runs in-process
(`fbi_ref.cli.program`) unless a test needs a real process (Ctrl-C, a terminal).
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import h5py
import numpy as np
import pytest
from PIL import Image

import fbi_ref
from fbi_ref.cli import main
from fbi_ref.errors import ArchitectureError, DownloadError, FbiRefError, InputError, ModelFileError
from fbi_ref.evaluation import benchmark
from fbi_ref.io import weights_cache
from fbi_ref.io.arrays import load_arrays, write_npz
from fbi_ref.io.keras_files import read_keras_file
from fbi_ref.methods.explain import explain
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Activation, Architecture, Conv2D, Dense

from .strategies import randn, tiny_model


@pytest.fixture(scope="module")
def small(keras_fixtures):
    """The Keras-written small VGG (official layout)."""
    return keras_fixtures / "small_vgg_keras1_style.h5"


@pytest.fixture
def image(tmp_path):
    """A small RGB image file."""
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def cli(capsys, *args):
    """(exit code, stdout, stderr) of the command line run in-process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit_2(capsys, *args, says=""):
    """The command fails with exit code 2 and exactly one line on stderr that contains `says`."""
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    assert says in err, err
    return err


def copy_with(small, tmp_path, edit, name="crafted.h5"):
    """A copy of the small model's file, changed by edit(h5py.File)."""
    path = tmp_path / name
    shutil.copy(small, path)
    with h5py.File(path, "r+") as h5:
        edit(h5, tmp_path)
    return path


# --- 1. HDF5 external storage and links -------------------------------------------------------

def external_storage(h5, folder):
    """fc2's kernel replaced by a dataset whose bytes live in another file."""
    kernel = h5["fc2"]["fc2_W_1:0"]
    data = kernel[()]
    outside = folder / "outside.bin"
    outside.write_bytes((data + 1).astype("<f4").tobytes())
    del h5["fc2"]["fc2_W_1:0"]
    h5["fc2"].create_dataset("fc2_W_1:0", shape=data.shape, dtype="<f4", external=[(str(outside), 0, data.nbytes)])


def external_link(h5, folder):
    """fc2's kernel replaced by a link to a dataset in another HDF5 file."""
    data = h5["fc2"]["fc2_W_1:0"][()]
    with h5py.File(folder / "other.h5", "w") as other:
        other["kernel"] = data + 1
    del h5["fc2"]["fc2_W_1:0"]
    h5["fc2"]["fc2_W_1:0"] = h5py.ExternalLink(str(folder / "other.h5"), "/kernel")


def virtual_dataset(h5, folder):
    """fc2's kernel replaced by a virtual dataset mapping another file."""
    data = h5["fc2"]["fc2_W_1:0"][()]
    with h5py.File(folder / "source.h5", "w") as other:
        other["kernel"] = data + 1
    layout = h5py.VirtualLayout(shape=data.shape, dtype="f4")
    layout[...] = h5py.VirtualSource(str(folder / "source.h5"), "kernel", shape=data.shape)
    del h5["fc2"]["fc2_W_1:0"]
    h5["fc2"].create_virtual_dataset("fc2_W_1:0", layout)


@pytest.mark.parametrize("edit, says", [(external_storage, "keeps its data in another file"),
                                        (external_link, "external link"), (virtual_dataset, "virtual dataset")])
def test_weights_stored_outside_the_file_are_refused(small, tmp_path, capsys, edit, says):
    crafted = copy_with(small, tmp_path, edit)
    with pytest.raises(ModelFileError, match=says):
        fbi_ref.load_model(crafted)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    assert_one_line_exit_2(capsys, "reference", "--model", crafted, "--inputs", x, "--with-weights", "--methods",
                           "gradient", "--out", tmp_path / "ref.npz", says=says)
    assert not (tmp_path / "ref.npz").exists()


def test_soft_links_inside_the_file_are_followed(small, tmp_path):
    def soft(h5, folder):
        h5["stash"] = h5["fc2"]["fc2_W_1:0"][()]
        del h5["fc2"]["fc2_W_1:0"]
        h5["fc2"]["fc2_W_1:0"] = h5py.SoftLink("/stash")
    with h5py.File(small, "r") as h5:
        expected = h5["fc2"]["fc2_W_1:0"][()]
    model = fbi_ref.load_model(copy_with(small, tmp_path, soft))
    np.testing.assert_array_equal(model.layer("fc2").kernel, expected)


# --- 2. outputs never replace special files or symlinks ---------------------------------------

@pytest.fixture
def specials(tmp_path):
    """A FIFO, a symlink to a regular file, and the target (whose bytes must survive)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.bin"
    target.write_bytes(b"keep me")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    return fifo, link, target


@pytest.mark.parametrize("which", ["fifo", "link", "/dev/null"])
def test_reference_refuses_to_replace_a_fifo_a_symlink_or_a_device(small, tmp_path, capsys, specials, which):
    fifo, link, target = specials
    out = {"fifo": fifo, "link": link, "/dev/null": "/dev/null"}[which]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    kind = {"fifo": "FIFO", "link": "symbolic link", "/dev/null": "character device"}[which]
    assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", x, "--methods", "gradient",
                           "--out", out, says=f"exists and is a {kind}")
    assert fifo.is_fifo() and link.is_symlink() and target.read_bytes() == b"keep me"
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_figures_and_save_npz_refuse_symlinks_too(small, tmp_path, capsys, specials, image):
    fifo, link, target = specials
    png_link = tmp_path / "layers.png"
    png_link.symlink_to(target)
    assert_one_line_exit_2(capsys, "layers", image, "--model", small, "--out", png_link, says="symbolic link")
    out = tmp_path / "out"
    out.mkdir()
    (out / "in_explain.npz").symlink_to(target)
    assert_one_line_exit_2(capsys, "explain", image, "--model", small, "--method", "gradient", "--out", out,
                           "--save-npz", says="symbolic link")
    assert target.read_bytes() == b"keep me" and not (out / "in_explain.png").exists()
    with pytest.raises(InputError, match="FIFO"):
        write_npz(fifo, {"a": np.zeros(2)})


# --- 3. outputs never overwrite inputs --------------------------------------------------------

@pytest.mark.parametrize("command", ["layers", "sweep"])
def test_a_figure_is_never_written_over_its_input_image(small, capsys, image, command):
    before = image.read_bytes()
    assert_one_line_exit_2(capsys, command, image, "--model", small, "--out", image, says="is also an input")
    assert image.read_bytes() == before


def test_reference_never_writes_over_its_inputs_or_its_model(small, tmp_path, capsys):
    x = tmp_path / "x.npz"
    np.savez(x, x=np.zeros((1, 32, 32, 3), np.float32))
    before = x.read_bytes()
    assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", x, "--out", x, says="is also an input")
    assert x.read_bytes() == before
    model_copy = tmp_path / "model.h5"
    shutil.copy(small, model_copy)
    assert_one_line_exit_2(capsys, "reference", "--model", model_copy, "--inputs", x, "--out", model_copy,
                           says="is also an input")
    assert model_copy.read_bytes() == small.read_bytes()


def test_explain_never_overwrites_an_image_it_has_still_to_read(small, tmp_path, capsys, image, monkeypatch):
    second = tmp_path / "in_explain.png"
    shutil.copy(image, second)
    before = second.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(capsys, "explain", "in.png", "in_explain.png", "--model", small, "--method", "gradient",
                           "--out", ".", says="in_explain.png: is also an input")
    assert second.read_bytes() == before


# --- 4. declared sizes are checked before anything is allocated -------------------------------

def test_a_kernel_declared_enormous_is_refused_before_reading(small, tmp_path):
    def huge(h5, folder):
        del h5["fc2"]["fc2_W_1:0"]
        h5["fc2"].create_dataset("fc2_W_1:0", shape=(3, 3, 3, 2**40), dtype="f4", chunks=(1, 1, 1, 1024))
    crafted = copy_with(small, tmp_path, huge)
    assert crafted.stat().st_size < 400_000
    with pytest.raises(FbiRefError, match="expected shape|more than"):
        fbi_ref.load_model(crafted)
    with pytest.raises(ModelFileError, match="more than"):  # with no architecture to compare against
        read_keras_file(crafted, architecture=None)


def test_an_npy_header_declaring_a_terabyte_is_refused(tmp_path):
    path = tmp_path / "big.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**38,)})
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match="more than"):
        load_arrays(path)


def test_a_header_that_lies_about_its_data_is_refused(tmp_path):
    path = tmp_path / "short.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1000,)})
        f.write(b"\0" * 400)
    with pytest.raises(InputError, match="declares 4,000 bytes of data, the file holds 400"):
        load_arrays(path)


def test_compare_reads_one_array_at_a_time_and_refuses_arrays_over_the_limit(tmp_path):
    zeros = np.zeros(16 * 2**20, np.float32)  # 64 MiB, compressed to about 64 kB
    write_npz(tmp_path / "a.npz", {"x": zeros, "y": zeros})
    assert (tmp_path / "a.npz").stat().st_size < 2**20
    env = {**os.environ, "FBI_REF_MAX_ARRAY_BYTES": str(32 * 2**20)}
    result = subprocess.run([sys.executable, "-m", "fbi_ref.cli", "compare", tmp_path / "a.npz", tmp_path / "a.npz"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "more than the 33,554,432 allowed" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_keras_zip_bomb_is_refused_without_unpacking_it(keras_fixtures, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(keras_fixtures / "small_vgg_k3.keras") as source, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        target.writestr("config.json", source.read("config.json"))
        with target.open("model.weights.h5", "w") as member:
            for _ in range(64):
                member.write(b"\0" * 2**20)  # 64 MiB of zeros: about 64 kB in the zip
    assert bomb.stat().st_size < 2**20
    started = time.perf_counter()
    with pytest.raises(ModelFileError, match="more than the .* its architecture can need"):
        fbi_ref.load_model(bomb)
    assert time.perf_counter() - started < 5  # refused from the zip's directory, not after unpacking 64 MiB


def test_an_input_declared_enormous_is_refused_when_the_model_is_built():
    conv = Conv2D("c", np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32))
    with pytest.raises(ArchitectureError, match="activations would take"):
        Model(Architecture([conv], (100_000, 100_000, 3)))


# --- 5. every numeric option is range-checked; non-finite weights are refused -----------------

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


def test_weights_with_nan_are_refused(small, tmp_path):
    def poison(h5, folder):
        h5["fc1"]["fc1_W_1:0"][0, 0] = np.nan
    with pytest.raises(ArchitectureError, match="NaN or infinite"):
        fbi_ref.load_model(copy_with(small, tmp_path, poison))


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


# --- 6. FBI does not depend on how the file splits a layer and its ReLU -----------------------

def unfused(model):
    """The same network with every fused ReLU split off into an Activation('relu') layer of its own."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, (Conv2D, Dense)) and layer.activation == "relu":
            layers += [type(layer)(**{**layer.__dict__, "activation": "linear"}), Activation(f"{layer.name}_relu", "relu")]
        else:
            layers.append(layer)
    return model.with_layers(layers)


FBI_VARIANTS = [{}, {"topk_score": "forward"}, {"topk_score": "product"}, {"topk_layers": "all"},
                {"topk_layers": "all", "topk_score": "forward"}, {"unpool": "switch"}, {"unpool": "replicate"},
                {"start": "onehot", "dense_bias": "ignore"}, {"conv_bias": "subtract"}, {"mask_image": False},
                {"tau_mode": "relative", "tau": 0.1}, {"k": 2, "topk_layers": "all", "topk_score": "product"},
                {"start": "contrast"}, {"start_from": "probs"}, {"start": "logits", "start_relu": True},
                {"dense_bias": "subtract-support", "conv_bias": "subtract-support"}, {"unpool_min": "pooled"},
                {"mask_pools": True, "tau": 0.05}, {"mask_dense": False, "tau": 0.05}, {"topk_position": "pool"}, {"topk_position": "pool", "topk_layers": "all"},
                {"topk_sum": "absolute"}, {"topk_order": "after-relu", "topk_layers": "all", "tau": -np.inf},
                {"topk_order": "after-relu", "topk_position": "pool", "topk_layers": "all", "mask_pools": True}]


@pytest.mark.parametrize("options", FBI_VARIANTS, ids=[str(o) for o in FBI_VARIANTS])
def test_fbi_is_the_same_on_a_model_and_its_unfused_twin(options):
    fused = tiny_model(31)
    split = unfused(fused)
    x = randn(32, 3, 9, 9, 3)
    np.testing.assert_allclose(split.forward(x).logits, fused.forward(x).logits, atol=1e-12)
    settings = {"k": 0.5, "tau": 0.0, **options}
    a = explain(fused, x, "fbi", **settings)
    b = explain(split, x, "fbi", **settings)
    assert a.attribution.any()
    np.testing.assert_array_equal(b.attribution, a.attribution)


def test_the_unfused_twin_really_puts_the_relu_in_its_own_layer():
    split = unfused(tiny_model(31))
    assert [type(layer).__name__ for layer in split.layers[:3]] == ["Conv2D", "Activation", "Conv2D"]
    assert split.layers[0].activation == "linear"


# --- 7. derived models keep their FBI defaults ------------------------------------------------

def test_astype_and_the_randomised_models_keep_the_fbi_defaults():
    model = tiny_model(0, dtype=np.float32)
    model.fbi_defaults = {"k": 0.25, "tau": 0.05, "tau_mode": "relative"}
    assert model.astype(np.float64).fbi_defaults == model.fbi_defaults
    for _, randomised in benchmark.cascade(model, seed=1):
        assert randomised.fbi_defaults == model.fbi_defaults and randomised.class_names == model.class_names
    x = randn(1, 1, 9, 9, 3)
    assert explain(model.astype(np.float64), x, "fbi").options["tau_mode"] == "relative"


# --- 8. relative tau = -inf keeps everything --------------------------------------------------

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


# --- 9. no tracebacks ------------------------------------------------------------------------

def test_a_target_too_large_for_any_integer_type_is_one_line(small, capsys, image, tmp_path):
    assert_one_line_exit_2(capsys, "explain", image, "--model", small, "--target", "99999999999999999999999",
                           "--out", tmp_path, says="out of range")


def config_model(tmp_path, keras_fixtures, edit):
    """The .keras fixture with its config.json changed by edit(config)."""
    import json
    path = tmp_path / "edited.keras"
    with zipfile.ZipFile(keras_fixtures / "small_vgg_k3.keras") as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            target.writestr(item, data)
    return path


def set_kernel_size(value):
    def edit(config):
        config["config"]["layers"][1]["config"]["kernel_size"] = value
        return config
    return edit


@pytest.mark.parametrize("edit", [set_kernel_size("abc"), set_kernel_size({"a": 1}), lambda c: [c],
                                  lambda c: {**c, "config": {**c["config"], "layers": [["not", "a", "dict"]]}},
                                  lambda c: {**c, "config": {**c["config"], "layers": "abc"}}])
def test_a_malformed_model_config_is_one_line(keras_fixtures, tmp_path, capsys, image, edit):
    path = config_model(tmp_path, keras_fixtures, edit)
    with pytest.raises(FbiRefError):
        fbi_ref.load_model(path)
    assert_one_line_exit_2(capsys, "explain", image, "--model", path, "--out", tmp_path)


def test_compare_on_a_zip_whose_member_is_not_an_array_is_one_line(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    assert_one_line_exit_2(capsys, "compare", tmp_path / "odd.npz", tmp_path / "odd.npz", says="is not a .npy array")


def test_an_image_whose_name_is_not_utf8_is_explained(small, tmp_path, capsys, image):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    shutil.copy(image, odd)
    code, out, err = cli(capsys, "explain", odd, "--model", small, "--method", "gradient", "--out", tmp_path / "out")
    assert code == 0 and "caf\\xe9.png" in out and err == ""
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_api_misuse_raises_typed_errors():
    model = tiny_model(0)
    with pytest.raises(InputError):
        fbi_ref.load_image(None, model)
    with pytest.raises(InputError):
        explain(model, randn(0, 1, 9, 9, 3), "gradient", target=1.0)
    with pytest.raises(InputError):
        explain(model, randn(0, 1, 9, 9, 3), "gradient", target=object())
    with pytest.raises(ModelFileError, match="empty"):
        fbi_ref.load_model("")
    with pytest.raises(InputError):
        fbi_ref.load_model(None)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.02, 0.1, 0.2, 0.3, 0.5, 0.8])
def test_ctrl_c_at_any_moment_of_start_up_is_one_line_and_exit_130(small, image, tmp_path, delay):
    command = [sys.executable, "-m", "fbi_ref.cli", "explain", image, "--model", small, "--out", tmp_path]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    if "_explain.png" in out:  # the work was done before the signal came (0), or it came during the
        assert child.returncode in (0, -signal.SIGINT) and err == ""  # interpreter's exit, which it ends silently
        return
    assert child.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fbi-ref") and "interrupted" in err


# --- 10. downloads: a deadline, stale temporary files, honest counts --------------------------

class Trickle(BaseHTTPRequestHandler):
    """/slow: 1 byte every 0.3 s of a promised 1000; /stall: 100 kB, then nothing."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000" if self.path == "/slow" else "200000")
        self.end_headers()
        try:
            if self.path == "/slow":
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            else:
                self.wfile.write(b"y" * 100_000)
                self.wfile.flush()
                time.sleep(5)
        except OSError:
            pass

    def log_message(self, *args):
        """Quiet."""


@pytest.fixture
def trickle(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_trickling_server_is_stopped_by_the_deadline(trickle, tmp_path):
    started = time.perf_counter()
    with pytest.raises(DownloadError, match="too slow"):
        weights_cache.download(f"{trickle}/slow", tmp_path / "w.h5", progress=False, timeout=5, deadline=1.5)
    assert time.perf_counter() - started < 4
    assert list(tmp_path.iterdir()) == []


def test_a_stall_reports_the_bytes_that_did_arrive(trickle, tmp_path):
    with pytest.raises(DownloadError, match="after 100000 of 200000 bytes"):
        weights_cache.download(f"{trickle}/stall", tmp_path / "w.h5", progress=False, timeout=1)


def test_the_next_download_removes_the_parts_that_killed_downloads_left(tmp_path):
    import fcntl
    dest = tmp_path / "w.h5"
    stale = tmp_path / ".w.h5.dead0001.part"
    stale.write_bytes(b"half a file")
    live = tmp_path / ".w.h5.live0002.part"
    live.write_bytes(b"being written")
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # a download still running holds its lock
        removed = weights_cache.remove_stale_parts(dest)
    assert removed == [stale] and not stale.exists() and live.exists()


# --- 11. bounds and clean messages ------------------------------------------------------------

def test_maps_has_an_upper_bound(small, capsys, image, tmp_path):
    assert_one_line_exit_2(capsys, "layers", image, "--model", small, "--maps", "100", "--out", tmp_path / "l.png",
                           says="from 1 to 16")


def test_a_write_error_names_the_users_file_not_a_temporary_one(small, tmp_path, capsys):
    (tmp_path / "plain").write_text("a file, not a folder")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    err = assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", x, "--methods", "gradient",
                                 "--out", tmp_path / "plain" / "r.npz", says="r.npz")
    assert ".part" not in err


def test_a_write_error_of_the_api_names_the_users_file(tmp_path):
    with pytest.raises(InputError) as error:
        write_npz(tmp_path / "no-such-folder" / "r.npz", {"a": np.zeros(1)})
    assert "r.npz: cannot write" in str(error.value) and ".part" not in str(error.value)


def test_infinite_tau_gives_no_warnings(small, capsys, image, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = cli(capsys, "explain", image, "--model", small, "--method", "fbi", "--tau", "inf",
                           "--tau-mode", "relative", "--out", tmp_path)
    assert code == 0 and err == ""


# --- found by a hostile review ------------------------------------------------------------------

@pytest.mark.parametrize("edit", [
    set_kernel_size(0),
    lambda c: {**c, "config": {**c["config"], "layers": [
        {**c["config"]["layers"][0]}, {**c["config"]["layers"][1], "config": {**c["config"]["layers"][1]["config"], "strides": [0, 0]}},
        *c["config"]["layers"][2:]]}},
    lambda c: {**c, "config": {**c["config"], "layers": [
        {**c["config"]["layers"][0], "config": {**c["config"]["layers"][0]["config"], "batch_shape": [None, float("inf"), float("inf"), 3]}},
        *c["config"]["layers"][1:]]}},
], ids=["kernel 0", "strides 0", "infinite input"])
def test_config_sizes_must_be_positive_integers(keras_fixtures, tmp_path, edit):
    with pytest.raises(ModelFileError, match="positive integer"):
        fbi_ref.load_model(config_model(tmp_path, keras_fixtures, edit))


@pytest.mark.parametrize("layer, shape", [("block1_conv1", (3, 3, 3, 0)), ("predictions", (64, 0))])
def test_weights_with_a_zero_sized_axis_are_refused(small, tmp_path, layer, shape):
    def zero(h5, folder):
        group = h5[layer]
        for name in list(group):
            del group[name]
        group.create_dataset(f"{layer}_W_1:0", shape=shape, dtype="f4")
        group.create_dataset(f"{layer}_b_1:0", shape=shape[-1:], dtype="f4")
    with pytest.raises(FbiRefError):
        read_keras_file(copy_with(small, tmp_path, zero), architecture=None)
    with pytest.raises(FbiRefError):
        fbi_ref.load_model(copy_with(small, tmp_path, zero, "again.h5"))


def zip_member(path, flag_bits=0, method=None, data=b"\\x93NUMPY garbage"):
    """An .npz whose only member has the given general-purpose flag bits or compression method."""
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("a.npy")
        z.writestr(info, data)
    raw = bytearray(path.read_bytes())
    for header in (b"PK\\x03\\x04", b"PK\\x01\\x02"):  # local header and central directory entry
        at = raw.find(header)
        flags_at = at + (6 if header == b"PK\\x03\\x04" else 8)
        raw[flags_at] |= flag_bits
        if method is not None:
            raw[flags_at + 2] = method
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("kind", ["encrypted", "method 99", "lzma garbage"])
def test_npz_members_zipfile_cannot_open_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / "odd.npz"
    if kind == "encrypted":
        zip_member(path, flag_bits=0x1)
    elif kind == "method 99":
        zip_member(path, method=99)
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as z:
            z.writestr("a.npy", b"\\x93NUMPY" + bytes(200))
        raw = bytearray(path.read_bytes())
        start = raw.find(b"a.npy") + 5 + 4
        raw[start:start + 20] = bytes(range(20))
        path.write_bytes(bytes(raw))
    with pytest.raises(InputError):
        load_arrays(path)
    assert_one_line_exit_2(capsys, "compare", path, path)


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


def test_a_symlink_loop_is_one_line(small, tmp_path, capsys, image):
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    assert_one_line_exit_2(capsys, "layers", tmp_path / "l1", "--model", small, "--out", tmp_path / "o.png")
    assert_one_line_exit_2(capsys, "demo", "--model", tmp_path / "l1", "--out", tmp_path / "o.png")
    assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", tmp_path / "l1", "--out", tmp_path / "r.npz")


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


def test_more_api_misuse_raises_typed_one_line_errors(image):
    model = tiny_model(0)
    with pytest.raises(ModelFileError):
        fbi_ref.load_model("a" * 300)
    with pytest.raises(InputError):
        explain(None, randn(0, 1, 9, 9, 3))
    with pytest.raises(InputError):
        fbi_ref.load_image(image, None)
    with pytest.raises(InputError) as error:
        explain(model, randn(0, 1, 9, 9, 3), "integrated_gradients", baseline=np.zeros((2, 2)))
    assert "\n" not in str(error.value)


def test_a_planted_symlink_under_a_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    from fbi_ref.evaluation import report
    from fbi_ref.io import paths
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    planted = tmp_path / ".curves.png.planted.part"
    planted.symlink_to(victim)
    monkeypatch.setattr(paths, "temporary_beside", lambda path, tag: planted)  # as if an attacker guessed it
    plt = report.pyplot()
    with pytest.raises(InputError):
        report.save_png(plt, plt.subplots()[0], tmp_path / "curves.png")
    with pytest.raises(InputError):
        paths.write_text(tmp_path / "notes.md", "hello")
    with pytest.raises(InputError):
        write_npz(tmp_path / "r.npz", {"a": np.zeros(2)})
    assert victim.read_text() == "keep me" and planted.is_symlink()  # not written through, not removed
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "r.npz").exists()


def test_a_model_given_with_a_tilde_is_an_input_too(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(small, tmp_path / "m.png")
    assert_one_line_exit_2(capsys, "demo", "--model", "~/m.png", "--out", tmp_path / "m.png", says="is also an input")
    assert (tmp_path / "m.png").read_bytes() == small.read_bytes()


def test_a_failed_explain_leaves_no_output_folder(small, tmp_path, capsys, image):
    assert_one_line_exit_2(capsys, "explain", image, "--model", tmp_path / "missing.h5", "--out", tmp_path / "new")
    assert not (tmp_path / "new").exists()


class SlowHeaders(BaseHTTPRequestHandler):
    """Sends the status line, then one header line a second, for ever."""

    def do_GET(self):
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\\r\\n")
            for i in range(1000):
                self.wfile.write(f"X-Slow-{i}: yes\\r\\n".encode())
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args):
        """Quiet."""


def test_the_deadline_holds_while_the_headers_trickle_in(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHeaders)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.perf_counter()
        with pytest.raises(DownloadError, match="too slow"):
            weights_cache.download(f"http://127.0.0.1:{server.server_port}/x", tmp_path / "w.h5", progress=False,
                                   timeout=5, deadline=1.5)
        assert time.perf_counter() - started < 4
    finally:
        server.shutdown()
        server.server_close()
