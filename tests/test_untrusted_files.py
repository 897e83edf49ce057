"""Untrusted files: a model, array or image file cannot make fbi_ref read outside it, allocate what it merely
declares, load what it does not hold, or end in a traceback (io/keras_files.py, io/keras_config.py,
io/arrays.py, io/paths.py, reference/compare.py's reading)."""
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import ArchitectureError, FbiRefError, InputError, ModelFileError
from fbi_ref.io.arrays import load_arrays, write_npz
from fbi_ref.io.keras_files import read_keras_file

from .cli_helpers import assert_one_line_exit_2, cli


def copy_with(small, tmp_path, edit, name="crafted.h5"):
    """A copy of the small model's file, changed by edit(h5py.File)."""
    path = tmp_path / name
    shutil.copy(small, path)
    with h5py.File(path, "r+") as h5:
        edit(h5, tmp_path)
    return path


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


def test_weights_with_nan_are_refused(small, tmp_path):
    def poison(h5, folder):
        h5["fc1"]["fc1_W_1:0"][0, 0] = np.nan
    with pytest.raises(ArchitectureError, match="NaN or infinite"):
        fbi_ref.load_model(copy_with(small, tmp_path, poison))


@pytest.mark.parametrize("layer, shape", [("block1_conv1", (3, 3, 3, 0)), ("predictions", (64, 0))])
def test_weights_with_a_zero_sized_axis_are_refused(small, tmp_path, layer, shape):
    def zero(h5, folder):
        group = h5[layer]
        for name in list(group):
            del group[name]
        group.create_dataset(f"{layer}_W_1:0", shape=shape, dtype="f4")
        group.create_dataset(f"{layer}_b_1:0", shape=shape[-1:], dtype="f4")
    with pytest.raises(ModelFileError, match=r"has shape .*: not a kernel or a bias"):
        read_keras_file(copy_with(small, tmp_path, zero), architecture=None)
    with pytest.raises(ModelFileError, match=r"has shape .*: not a kernel or a bias"):
        fbi_ref.load_model(copy_with(small, tmp_path, zero, "again.h5"))


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


def config_model(tmp_path, keras_fixtures, edit):
    """The .keras fixture with its config.json changed by edit(config)."""
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
    with pytest.raises(ModelFileError, match="edited.keras: .*(kernel_size must be|JSON list|not a readable|no list of layers|not a JSON object)"):
        fbi_ref.load_model(path)
    assert_one_line_exit_2(capsys, "explain", image, "--model", path, "--out", tmp_path)


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


def zip_member(path, flag_bits=0, method=None, data=b"\x93NUMPY garbage"):
    """An .npz whose only member has the given general-purpose flag bits or compression method."""
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("a.npy")
        z.writestr(info, data)
    raw = bytearray(path.read_bytes())
    for header in (b"PK\x03\x04", b"PK\x01\x02"):  # local header and central directory entry
        at = raw.find(header)
        flags_at = at + (6 if header == b"PK\x03\x04" else 8)
        raw[flags_at] |= flag_bits
        if method is not None:
            raw[flags_at + 2] = method
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("kind, says", [("encrypted", "is encrypted"), ("method 99", "compression method is not supported"),
                                        ("lzma garbage", "Corrupt input data")])
def test_npz_members_zipfile_cannot_open_are_one_line(tmp_path, capsys, kind, says):
    path = tmp_path / "odd.npz"
    if kind == "encrypted":
        zip_member(path, flag_bits=0x1)
    elif kind == "method 99":
        zip_member(path, method=99)
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as z:
            z.writestr("a.npy", b"\x93NUMPY" + bytes(200))
        raw = bytearray(path.read_bytes())
        start = raw.find(b"a.npy") + 5 + 4
        raw[start:start + 20] = bytes(range(20))
        path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=f"member 'a.npy' is corrupt .*{says}"):
        load_arrays(path)
    assert_one_line_exit_2(capsys, "compare", path, path, says=says)


def test_compare_on_a_zip_whose_member_is_not_an_array_is_one_line(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    assert_one_line_exit_2(capsys, "compare", tmp_path / "odd.npz", tmp_path / "odd.npz", says="is not a .npy array")


def test_a_symlink_loop_is_one_line(small, tmp_path, capsys, image):
    (tmp_path / "l1").symlink_to(tmp_path / "l2")
    (tmp_path / "l2").symlink_to(tmp_path / "l1")
    assert_one_line_exit_2(capsys, "layers", tmp_path / "l1", "--model", small, "--out", tmp_path / "o.png")
    assert_one_line_exit_2(capsys, "demo", "--model", tmp_path / "l1", "--out", tmp_path / "o.png")
    assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", tmp_path / "l1", "--out", tmp_path / "r.npz")


def test_an_image_whose_name_is_not_utf8_is_explained(small, tmp_path, capsys, image):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    shutil.copy(image, odd)
    code, out, err = cli(capsys, "explain", odd, "--model", small, "--method", "gradient", "--out", tmp_path / "out")
    assert code == 0 and "caf\\xe9.png" in out and err == ""
    assert len(list((tmp_path / "out").iterdir())) == 1
