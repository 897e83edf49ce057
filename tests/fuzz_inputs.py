"""Fuzzing the loaders and the command line with hypothesis: mutated Keras files, array files, images, option
strings and input arrays. Every call must either succeed or raise a typed FbiRefError with one line (exit 2 and
one line on stderr for the command line); any other exception fails.

Run by tests/test_fuzz.py in a process whose address space is limited (FUZZ_MEMORY_LIMIT there), so that an
allocation a header merely declares shows up as a MemoryError, i.e. as a failure. On its own:
    python -m pytest tests/fuzz_inputs.py
"""
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fbi_ref
from fbi_ref.cli import main
from fbi_ref.errors import FbiRefError
from fbi_ref.io.arrays import load_arrays
from fbi_ref.io.images import load_image_rgb

FIXTURES = Path(os.environ.get("FBI_REF_FIXTURES", Path(__file__).resolve().parent / "fixtures" / "keras-small"))
MODEL_FILES = sorted([*FIXTURES.glob("*.h5"), *FIXTURES.glob("*.keras")])
IMAGE = FIXTURES / "image_fixture_50x37.png"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def typed_or_fine(call):
    """Run call(); a typed error with a one-line message is fine, any other exception propagates."""
    try:
        return call()
    except FbiRefError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return None


@contextlib.contextmanager
def scratch():
    """A temporary folder."""
    folder = tempfile.mkdtemp(prefix="fuzz")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- byte-level mutations of the real Keras-written files ---------------------------------------

edits = st.lists(st.tuples(st.sampled_from(["flip", "zero", "insert", "delete", "truncate"]),
                           st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=32)),
                 min_size=1, max_size=6)


def mutate(data, changes):
    """The bytes with each change applied at a position given as a fraction of the length."""
    data = bytearray(data)
    for kind, where, chunk in changes:
        at = int(where * len(data))
        if kind == "flip":
            data[at:at + len(chunk)] = bytes(a ^ b for a, b in zip(data[at:at + len(chunk)], chunk))
        elif kind == "zero":
            data[at:at + len(chunk)] = bytes(len(data[at:at + len(chunk)]))
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at:at + len(chunk)]
        else:
            del data[at:]
    return bytes(data)


@fuzz
@given(st.sampled_from(MODEL_FILES), edits)
def test_mutated_model_files_load_or_fail_in_one_line(path, changes):
    with scratch() as folder:
        target = folder / path.name
        target.write_bytes(mutate(path.read_bytes(), changes))
        typed_or_fine(lambda: fbi_ref.load_model(target))


# --- structural mutations through h5py ----------------------------------------------------------

shapes = st.lists(st.one_of(st.integers(0, 8), st.just(2**40), st.integers(2**20, 2**33)), min_size=0, max_size=5)
dtypes = st.sampled_from(["f4", "f8", "f2", "i4", "u1", "S4", "?"])


def structural_edit(h5, rng, kind, shape, dtype):
    """One change to a Keras weights file through h5py: a dataset replaced, an attribute garbled, ..."""
    datasets = []
    h5.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    if not datasets:
        return
    name = datasets[rng.integers(len(datasets))]
    if kind == "reshape":
        del h5[name]
        h5.create_dataset(name, shape=tuple(shape), dtype=dtype, chunks=True if shape and min(shape) > 0 else None)
    elif kind == "delete":
        del h5[name]
    elif kind == "attribute":
        attrs = [(obj, key) for obj in (h5, h5[name].parent) for key in obj.attrs]
        if attrs:
            obj, key = attrs[rng.integers(len(attrs))]
            obj.attrs[key] = np.array([b"x" * int(rng.integers(1, 5))] * int(rng.integers(0, 4)))
    elif kind == "link":
        del h5[name]
        h5[name] = h5py.SoftLink("/does/not/exist")


@fuzz
@given(st.sampled_from([p for p in MODEL_FILES if p.suffix == ".h5"]),
       st.sampled_from(["reshape", "delete", "attribute", "link"]), shapes, dtypes, st.integers(0, 2**31))
def test_structurally_changed_model_files_load_or_fail_in_one_line(path, kind, shape, dtype, seed):
    with scratch() as folder:
        target = folder / path.name
        shutil.copy(path, target)
        try:
            with h5py.File(target, "r+") as h5:
                structural_edit(h5, np.random.default_rng(seed), kind, shape, dtype)
        except (ValueError, OSError, TypeError):  # h5py itself refused to write this change
            return
        typed_or_fine(lambda: fbi_ref.load_model(target))


# --- array files --------------------------------------------------------------------------------

@fuzz
@given(st.sampled_from(["<f4", ">f8", "|b1", "<i8", "O", "<c16", "|V8"]),
       st.lists(st.one_of(st.integers(0, 6), st.integers(2**30, 2**45)), max_size=4), st.booleans(),
       st.integers(0, 4096), st.sampled_from(["npy", "npz"]))
def test_array_files_with_any_header_load_or_fail_in_one_line(descr, shape, fortran, data_bytes, kind):
    with scratch() as folder:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
        payload = header.getvalue() + bytes(data_bytes)
        path = folder / f"a.{kind}"
        if kind == "npy":
            path.write_bytes(payload)
        else:
            import zipfile
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("x.npy", payload)
        typed_or_fine(lambda: load_arrays(path))


@fuzz
@given(edits)
def test_mutated_reference_files_load_or_fail_in_one_line(changes):
    with scratch() as folder:
        path = folder / "r.npz"
        path.write_bytes(mutate((FIXTURES / "small_vgg_forward_reference.npz").read_bytes(), changes))
        typed_or_fine(lambda: load_arrays(path))


# --- images -------------------------------------------------------------------------------------

@fuzz
@given(edits)
def test_mutated_images_load_or_fail_in_one_line(changes):
    with scratch() as folder:
        path = folder / "i.png"
        path.write_bytes(mutate(IMAGE.read_bytes(), changes))
        typed_or_fine(lambda: load_image_rgb(path, (32, 32)))


# --- the command line's options ----------------------------------------------------------------

OPTIONS = {"fbi": ["k", "tau", "tau_mode", "start", "dense_bias", "conv_bias", "unpool", "topk_score", "topk_layers",
                   "mask_image", "nope"],
           "gradient": ["output"], "lrp_epsilon": ["epsilon"], "gradcam": ["layer"],
           "integrated_gradients": ["steps", "batch_size", "baseline"],
           "smoothgrad": ["samples", "noise", "seed", "batch_size", "base"],
           "occlusion": ["patch", "stride", "fill", "batch_size"]}
values = st.one_of(st.integers(-10**30, 8).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(["nan", "inf", "-inf", "true", "false", "none", "", "abc", "1e309", "0x10",
                                    "block1_conv1", "fc1", "zeros", "black", "switch", "relative", "all", "-0"]),
                   st.text(max_size=8))


@fuzz
@given(st.sampled_from(sorted(OPTIONS)), st.data())
def test_any_option_value_gives_exit_0_or_one_line_and_exit_2(method, data):
    name = data.draw(st.sampled_from(OPTIONS[method]))
    value = data.draw(values)
    err = io.StringIO()
    with scratch() as folder, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["explain", str(IMAGE), "--model", str(FIXTURES / "small_vgg_k3.keras"), "--method", method,
                     "--option", f"{method}.{name}={value}", "--out", str(folder), "-q"])
    text = err.getvalue()
    assert code in (0, 2), (code, text)
    assert (code == 0 and text == "") or (code == 2 and text.count("\n") == 1 and "Traceback" not in text), text


# --- input arrays -------------------------------------------------------------------------------

special = st.sampled_from([0.0, -0.0, 1e30, -1e30, 3e38, np.nan, np.inf, -np.inf, 1e-45])


@fuzz
@given(st.sampled_from(["float32", "float64", "float16", "int64", "bool", "complex64"]),
       st.lists(st.integers(0, 40), min_size=0, max_size=5), special, st.sampled_from(["fbi", "gradient", "occlusion"]))
def test_any_input_array_is_explained_or_refused_in_one_line(dtype, shape, fill, method):
    model = fbi_ref.load_model(FIXTURES / "small_vgg_k3.keras")
    with np.errstate(all="ignore"):
        x = np.full(shape, fill).astype(dtype)
    typed_or_fine(lambda: fbi_ref.explain(model, x, method))
