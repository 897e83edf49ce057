"""Outputs: a command or the API never replaces a symlink, FIFO, device or folder, never writes over one of its
own inputs (its images, arrays or model), never writes through a planted temporary file, and names the user's
file when writing fails (io/paths.py, io/arrays.py, figures/panels.py, the commands)."""
import os
import shutil

import numpy as np
import pytest

from fbi_ref.errors import InputError
from fbi_ref.figures import panels
from fbi_ref.io import paths
from fbi_ref.io.arrays import write_npz

from .cli_helpers import assert_one_line_exit_2


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


def test_a_model_given_with_a_tilde_is_an_input_too(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(small, tmp_path / "m.png")
    assert_one_line_exit_2(capsys, "demo", "--model", "~/m.png", "--out", tmp_path / "m.png", says="is also an input")
    assert (tmp_path / "m.png").read_bytes() == small.read_bytes()


def test_a_write_error_names_the_users_file_not_a_temporary_one(small, tmp_path, capsys):
    (tmp_path / "plain").write_text("a file, not a folder")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 32, 32, 3), np.float32))
    err = assert_one_line_exit_2(capsys, "reference", "--model", small, "--inputs", x, "--methods", "gradient",
                                 "--out", tmp_path / "plain" / "r.npz", says="r.npz")
    assert ".part" not in err


def test_a_write_error_of_the_api_names_the_users_file(tmp_path):
    with pytest.raises(InputError, match="r.npz: cannot write") as error:
        write_npz(tmp_path / "no-such-folder" / "r.npz", {"a": np.zeros(1)})
    assert "r.npz: cannot write" in str(error.value) and ".part" not in str(error.value)


def test_a_planted_symlink_under_a_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    planted = tmp_path / ".curves.png.planted.part"
    planted.symlink_to(victim)
    monkeypatch.setattr(paths, "temporary_beside", lambda path, tag: planted)  # as if an attacker guessed it
    with pytest.raises(InputError, match="curves.png: cannot write"):
        panels.save(panels.new_figure((2, 2)), tmp_path / "curves.png")
    with pytest.raises(InputError, match="notes.md: cannot write"):
        paths.write_text(tmp_path / "notes.md", "hello")
    with pytest.raises(InputError, match="r.npz: cannot write"):
        write_npz(tmp_path / "r.npz", {"a": np.zeros(2)})
    assert victim.read_text() == "keep me" and planted.is_symlink()  # not written through, not removed
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "r.npz").exists()


def test_a_failed_explain_leaves_no_output_folder(small, tmp_path, capsys, image):
    assert_one_line_exit_2(capsys, "explain", image, "--model", tmp_path / "missing.h5", "--out", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_write_removes_what_a_killed_write_of_the_same_file_left_but_not_a_live_one(tmp_path):
    """A killed process leaves its temporary file; the next write of that file removes it, unless a writer
    still holds it (its lock)."""
    import fcntl
    stale, live = tmp_path / ".r.npz.dead0001.part", tmp_path / ".r.npz.live0002.part"
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    other = tmp_path / ".other.npz.dead0003.part"  # another file's: not this write's business
    other.write_bytes(b"x")
    fifo = tmp_path / ".r.npz.fifo0004.part"  # not a regular file: never opened to wait on, never removed
    os.mkfifo(fifo)
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        write_npz(tmp_path / "r.npz", {"a": np.zeros(2)})
    assert not stale.exists() and live.exists() and other.exists() and fifo.is_fifo()
    assert (tmp_path / "r.npz").is_file()

