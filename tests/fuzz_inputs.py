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
FINETUNES = Path(__file__).resolve().parent / "fixtures" / "finetunes"
ONNX_FILES = sorted(FINETUNES.glob("*.onnx"))  # tf2onnx's and torch.onnx's (issue 24)
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
@given(st.sampled_from(MODEL_FILES + ONNX_FILES), edits)
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


# --- issue 24: the readers and files added since the first round --------------------------------------



def cli_one_line(args):
    """Exit 0 or 1 with nothing on stderr but warnings, or exit 2 with one line; never a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in args])
    text = err.getvalue()
    assert code in (0, 1, 2), (code, text)
    assert "Traceback" not in text and (code != 2 or text.count("\n") == 1), text
    return code


ATTRIBUTES = {"kernel_shape": st.lists(st.integers(-1, 5), min_size=1, max_size=3),
              "strides": st.lists(st.integers(-1, 3), min_size=1, max_size=3),
              "pads": st.lists(st.integers(-1, 3), min_size=1, max_size=5),
              "dilations": st.lists(st.integers(0, 3), min_size=1, max_size=3),
              "auto_pad": st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "BOGUS"]),
              "axis": st.integers(-5, 5), "perm": st.permutations([0, 1, 2, 3]),
              "keepdims": st.integers(0, 1), "group": st.integers(0, 3), "epsilon": st.floats(-1, 1),
              "transB": st.integers(0, 1), "count_include_pad": st.integers(0, 1), "ceil_mode": st.integers(0, 1)}


@fuzz
@given(st.sampled_from(ONNX_FILES), st.data())
def test_onnx_graphs_with_other_attributes_give_onnxruntimes_answer_or_one_line(path, data):
    """Random attributes on the supported ops, a reshaped or duplicated initializer: what fbi_ref accepts,
    onnxruntime must run, with the same probabilities; everything else is refused in one line."""
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type not in ("Shape", "Gather", "Cast", "Slice", "Concat")]
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["attribute", "reshape", "duplicate"]))
        if kind == "attribute":
            node = data.draw(st.sampled_from(nodes))
            name = data.draw(st.sampled_from(sorted(ATTRIBUTES)))
            for attribute in [a for a in node.attribute if a.name == name]:
                node.attribute.remove(attribute)
            node.attribute.append(helper.make_attribute(name, data.draw(ATTRIBUTES[name])))
        else:
            tensor = data.draw(st.sampled_from(list(model.graph.initializer)))
            array = numpy_helper.to_array(tensor)
            if kind == "reshape" and array.size:
                array = array.reshape(data.draw(st.sampled_from([(array.size,), (1, array.size), (array.size, 1)])))
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
            else:
                model.graph.initializer.append(numpy_helper.from_array(array * 2, tensor.name))
    x_raw = np.load(FINETUNES / (path.name.split(".")[0] + ".npz"))["x_raw"][:1]
    torch_graph = path.name.endswith(".torch.onnx")
    with scratch() as folder:
        target = folder / "edited.onnx"
        onnx.save(model, str(target))
        # the fixtures' images as each graph takes them: raw RGB (the graph's own input map, or none in
        # ft_flatten), or torch's x / 127.5 - 1 in NCHW
        own = None if path.name.split(".")[0] in ("ft_gap", "ft_pools", "ft_sequential_flatten") and not torch_graph \
            else "identity"
        ours = typed_or_fine(lambda: fbi_ref.load_model(target, preprocessing=own))
        if ours is None:
            return
        x = (x_raw / 127.5 - 1).astype(np.float32) if torch_graph else x_raw
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])  # must accept it
        theirs = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2) if torch_graph else x})[0]
        mine = ours.forward(fbi_ref.io.images.preprocess(x, ours.preprocessing)).probs
        assert np.abs(mine - theirs).max() <= 1e-5 * np.abs(theirs).max(), (mine, theirs)


safetensors_dtypes = st.sampled_from(["F32", "F16", "F64", "I64", "BF16", "U8", "BOOL", "X"])


@fuzz
@given(st.lists(st.tuples(st.sampled_from(["features.0.weight", "features.0.bias", "classifier.0.weight",
                                           "classifier.0.bias", "features.00.weight", "other"]),
                          safetensors_dtypes, st.lists(st.one_of(st.integers(0, 4), st.just(2**40)), max_size=4),
                          st.integers(-8, 2**40), st.integers(-8, 2**40)), max_size=5),
       st.integers(0, 256))
def test_safetensors_headers_load_or_fail_in_one_line(entries, data_bytes):
    """Overlapping, out-of-file and huge offsets, colliding keys, odd dtypes and shapes."""
    import json
    import struct
    header = {key: {"dtype": dtype, "shape": shape, "data_offsets": [start, stop]}
              for key, dtype, shape, start, stop in entries}
    text = json.dumps(header).encode()
    with scratch() as folder:
        path = folder / "m.safetensors"
        path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data_bytes))
        typed_or_fine(lambda: fbi_ref.load_model(path))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                                     st.text(max_size=6)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)
REFERENCE = FIXTURES / "small_vgg_forward_reference.npz"


@fuzz
@given(st.sampled_from(["model", "layers", "methods", "dtype", "near_ties", "warnings", "walks", "fbi_walk",
                        "format_version"]), json_values)
def test_a_reference_meta_of_any_shape_compares_or_fails_in_one_line(field, value):
    import json
    from fbi_ref.io.arrays import write_npz
    arrays = load_arrays(REFERENCE)
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    meta[field] = value
    arrays["meta"] = np.array(json.dumps(meta))
    with scratch() as folder:
        write_npz(folder / "ref.npz", arrays)
        cli_one_line(["compare", folder / "ref.npz", REFERENCE, "--no-replay"])
        cli_one_line(["compare", folder / "ref.npz", REFERENCE])


@fuzz
@given(json_values, st.booleans())
def test_a_shard_index_of_any_shape_compares_or_fails_in_one_line(value, whole):
    """index.json replaced (whole) or one of its fields replaced by any JSON value."""
    import json
    from fbi_ref.io.arrays import write_npz
    arrays = load_arrays(REFERENCE)
    with scratch() as folder:
        shard = write_npz(folder / "ref" / "shard-00000.npz", arrays) if (folder / "ref").mkdir() is None else None
        from fbi_ref.io.weights_cache import sha256sum
        n = len(arrays["x"])
        index = {"format": "fbi_ref reference shards", "format_version": 1, "run": {}, "images": n,
                 "batch_size": n, "complete": True,
                 "shards": [{"number": 0, "file": shard.name, "start": 0, "stop": n, "sha256": sha256sum(shard)}]}
        if whole:
            index = value
        else:
            index[sorted(index)[hash(json.dumps(value, sort_keys=True)) % len(index)]] = value
        (folder / "ref" / "index.json").write_text(json.dumps(index))
        cli_one_line(["compare", folder / "ref", REFERENCE])


@fuzz
@given(st.lists(st.one_of(st.integers(-5, 100), st.sampled_from(["inf", "-inf", "nan", "1e400", "", "x", "3.5"])),
                min_size=6, max_size=6),
       st.sampled_from(["utf-8", "utf-16", "latin-1", "x-unknown", None]), st.booleans())
def test_voc_annotations_of_any_content_read_or_fail_in_one_line(numbers, encoding, declaration):
    from fbi_ref.evaluation import voc
    width, height, *box = numbers
    body = (f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>circle</name>"
            f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>"
            f"</bndbox></object></annotation>")
    head = f'<?xml version="1.0" encoding="{encoding}"?>' if encoding and declaration else ""
    codec = encoding if encoding in ("utf-8", "utf-16", "latin-1") else "utf-8"
    with scratch() as folder:
        (folder / "Annotations").mkdir()
        (folder / "ImageSets" / "Main").mkdir(parents=True)
        (folder / "ImageSets" / "Main" / "test.txt").write_text("a1\n")
        (folder / "Annotations" / "a1.xml").write_bytes((head + body).encode(codec))
        typed_or_fine(lambda: voc.read_dataset(folder))


PTH = Path(__file__).resolve().parent / "fixtures" / "torch-small" / "vgg11_w8.pth"  # torch.save's (generate.py)


@fuzz
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.sampled_from(["none", "drop", "duplicate", "bytes"]),
       st.integers(0, 10**6), edits)
def test_pth_zips_of_any_records_give_torchs_weights_or_fail_in_one_line(deflate, change, which, changes):
    """torch.save's zip re-written with records DEFLATE-compressed at random (as Info-ZIP does), a record dropped
    or duplicated, or bytes changed: fbi_ref gives the weights of the original file or one typed line (a
    compressed record read through mmap gave biases of 1e20)."""
    import zipfile
    original = fbi_ref.load_model(PTH) if _has_torch() else None
    with scratch() as folder, zipfile.ZipFile(PTH) as old:
        target = folder / "re.pth"
        members = old.infolist()
        skip = members[which % len(members)].filename if change == "drop" else None
        with zipfile.ZipFile(target, "w") as new:
            for n, info in enumerate(members):
                if info.filename == skip:
                    continue
                kind = zipfile.ZIP_DEFLATED if deflate[n % len(deflate)] else zipfile.ZIP_STORED
                new.writestr(info.filename, old.read(info.filename), compress_type=kind)
            if change == "duplicate":
                name = members[which % len(members)].filename
                with contextlib.suppress(Exception):  # zipfile warns about a duplicate name, and writes it
                    new.writestr(name, old.read(name)[::-1])
        if change == "bytes":
            target.write_bytes(mutate(target.read_bytes(), changes))
        loaded = typed_or_fine(lambda: fbi_ref.load_model(target))
        if loaded is not None and change == "none":
            for a, b in zip(loaded.layers, original.layers):
                for name in a.weights:
                    assert np.array_equal(getattr(a, name), getattr(b, name)), (a.name, name)


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@fuzz
@given(json_values, st.sampled_from(["whole", "done", "entry", "run"]))
def test_an_explain_index_of_any_shape_resumes_or_fails_in_one_line(value, where):
    """explain's resume index (explain-index.json) replaced, or its 'done', one entry or its 'run' replaced."""
    import json
    model = FIXTURES / "small_vgg_k3.keras"
    with scratch() as folder:
        args = ["explain", IMAGE, "--model", model, "--method", "gradient", "--batch-size", "2", "--out", folder, "-q"]
        assert cli_one_line(args) == 0
        index = json.loads((folder / "explain-index.json").read_text())
        if where == "whole":
            index = value
        elif where == "entry":
            index["done"][next(iter(index["done"]))] = value
        else:
            index[where] = value
        (folder / "explain-index.json").write_text(json.dumps(index))
        cli_one_line(args + ["--resume"])
