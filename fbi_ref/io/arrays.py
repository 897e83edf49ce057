"""NumPy array files in and out: a deterministic .npz writer and a bounded reader that never unpickles.

    write_npz("ref.npz", {"x": x, "act/fc1": a})      # the same bytes on every run
    load_npz("ref.npz")                               # {key: array} in the file's order
    with open_npz("ref.npz") as arrays:               # one array at a time: arrays["act/fc1"], list(arrays)
        ...

Reading never trusts a header: each array's declared size is checked against the bytes its file (or zip
member) really holds and against MAX_ARRAY_BYTES before anything is allocated, object arrays (pickles) are
refused, and a zip member is read no further than the size the archive declares for it.
"""
from __future__ import annotations

import math
import os
import lzma
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.io.paths import input_file, shown, write_atomically

# A fixed timestamp for every zip entry (the earliest a zip file can hold): np.savez stamps the current
# time, which would make two runs differ in their bytes though not in their arrays.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# The largest array a file may hold, and the most all of load_npz's arrays together may take (bytes).
# VGG16's largest weight is 411 MB; a reference of 16 images at 224 x 224 holds arrays of up to 205 MB.
MAX_ARRAY_BYTES = int(os.environ.get("FBI_REF_MAX_ARRAY_BYTES", 2 * 2**30))
MAX_TOTAL_BYTES = int(os.environ.get("FBI_REF_MAX_TOTAL_BYTES", 4 * 2**30))
MAX_MEMBERS = 100_000


# --- writing ---------------------------------------------------------------------------------

def write_npz(path, arrays, inputs=()):
    """Write {key: array} as a compressed .npz that np.load reads, identical byte for byte on every run.

    The same format as np.savez_compressed, but with a fixed timestamp on every entry and keys in the
    given order. The file is written to a hidden temporary file first and renamed into place, so a failed
    write leaves nothing behind; `path` must not exist as anything but a regular file, nor be one of
    `inputs`. Errors name `path`, never the temporary file.
    """
    def write(file):
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return write_atomically(path, write, inputs)


# --- reading ---------------------------------------------------------------------------------

def load_arrays(path):
    """A .npy file as an array, or an .npz file as {key: array}; never unpickles; InputError in one line."""
    path = input_file(path, ".npy or .npz file")
    with open(path, "rb") as f:
        magic = f.read(6)
    # np.load takes anything that is neither a zip nor a .npy for a pickle: say what it really is instead.
    if magic == b"\x93NUMPY":
        with open(path, "rb") as f:
            return _read_npy(f, os.fstat(f.fileno()).st_size, shown(path))
    if magic.startswith(b"PK"):
        return load_npz(path)
    raise InputError(f"{shown(path)}: not a NumPy .npy or .npz file")


def load_npz(path) -> dict:
    """An .npz file as {key: array} in the file's order, all arrays together at most MAX_TOTAL_BYTES."""
    with open_npz(path) as arrays:
        if arrays.total_bytes > MAX_TOTAL_BYTES:
            raise InputError(f"{arrays.name}: its arrays take {arrays.total_bytes:,} bytes, more than the "
                             f"{MAX_TOTAL_BYTES:,} allowed at once (FBI_REF_MAX_TOTAL_BYTES)")
        return {key: arrays[key] for key in arrays}


def open_npz(path) -> NpzFile:
    """An .npz file as a read-only mapping that reads each array when asked (use it in a `with` block)."""
    return NpzFile(path)


class NpzFile(Mapping):
    """The arrays of an .npz file by key, in the file's order, each read (and checked) when it is asked for."""

    def __init__(self, path):
        path = input_file(path, ".npz file")
        self.name = shown(path)
        with open(path, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                raise InputError(f"{self.name}: a single .npy array, not an .npz archive of named arrays")
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise InputError(f"{self.name}: not a NumPy .npz file, corrupt or not a zip ({_first_line(e)})") from None
        members = self._zip.infolist()
        if len(members) > MAX_MEMBERS:
            raise InputError(f"{self.name}: {len(members):,} members, more than the {MAX_MEMBERS:,} allowed")
        self._members = {}
        for info in members:
            if not info.filename.endswith(".npy"):
                raise InputError(f"{self.name}: member {info.filename!r} is not a .npy array")
            key = info.filename[:-4]
            if key in self._members:
                raise InputError(f"{self.name}: member {info.filename!r} appears twice")
            self._members[key] = info
        self.total_bytes = sum(info.file_size for info in members)

    def __getitem__(self, key):
        info = self._members[key]
        try:
            with self._zip.open(info) as f:
                return _read_npy(f, info.file_size, f"{self.name}: member {info.filename!r}")
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, NotImplementedError) as e:
            # a damaged stream (zlib, lzma), an encrypted member (RuntimeError), an unknown compression
            raise InputError(f"{self.name}: member {info.filename!r} is corrupt ({_first_line(e)})") from None

    def __contains__(self, key):  # Mapping's own would read the whole member to find out
        return key in self._members

    def declared_shape(self, key):
        """The shape a member's .npy header declares, read without its data (KeyError if there is no such key)."""
        info = self._members[key]
        try:
            with self._zip.open(info) as f:
                return _npy_header(f, f"{self.name}: member {info.filename!r}")[0]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, NotImplementedError) as e:
            raise InputError(f"{self.name}: member {info.filename!r} is corrupt ({_first_line(e)})") from None

    def __iter__(self):
        return iter(self._members)

    def __len__(self):
        return len(self._members)

    def close(self):
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _npy_header(f, name):
    """(shape, fortran order, dtype) from the header of the .npy stream f."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unknown .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as e:
        raise InputError(f"{name}: not a valid .npy array ({_first_line(e)})") from None


def _read_npy(f, size, name):
    """The array in the .npy stream f, whose whole length is `size` bytes: header checked before allocating."""
    shape, fortran, dtype = _npy_header(f, name)
    if dtype.hasobject:
        raise InputError(f"{name}: holds Python objects (a pickle), which fbi_ref never loads")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES or math.prod(d for d in shape if d) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise InputError(f"{name}: declares {nbytes:,} bytes of data, more than the {MAX_ARRAY_BYTES:,} allowed "
                         f"(FBI_REF_MAX_ARRAY_BYTES)")
    data_bytes = size - f.tell()
    if nbytes != data_bytes:
        raise InputError(f"{name}: its header declares {nbytes:,} bytes of data, the file holds {data_bytes:,}")
    array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = memoryview(array.reshape(-1, order="A").view(np.uint8)) if nbytes else memoryview(b"")
    done = 0
    while done < nbytes:
        count = f.readinto(view[done:])
        if not count:
            raise InputError(f"{name}: truncated after {done:,} of {nbytes:,} bytes")
        done += count
    return array


def _first_line(error):
    """The first line of an exception's message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
