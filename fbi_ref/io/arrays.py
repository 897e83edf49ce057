"""NumPy array files in and out: a deterministic .npz writer and a reader that never unpickles.

    write_npz("ref.npz", {"x": x, "act/fc1": a})      # the same bytes on every run
    load_npz("ref.npz")                               # {key: array} in the file's order
"""
from __future__ import annotations

import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from fbi_ref.errors import InputError

# A fixed timestamp for every zip entry (the earliest a zip file can hold): np.savez stamps the current
# time, which would make two runs differ in their bytes though not in their arrays.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_npz(path, arrays):
    """Write {key: array} as a compressed .npz that np.load reads, identical byte for byte on every run.

    The same format as np.savez_compressed, but with a fixed timestamp on every entry, keys in the
    given order, and written to a temporary file first, so a failed write leaves no partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_npz(path):
    """An .npz file as {key: array} in the file's order; InputError with one line when it cannot be read."""
    data = load_arrays(path)
    if isinstance(data, np.ndarray):
        raise InputError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    return data


def load_arrays(path):
    """A .npy file as an array, or an .npz file as {key: array}; never unpickles; InputError in one line."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a .npy or .npz file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    # np.load takes anything that is neither a zip nor a .npy for a pickle: say what it really is instead.
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
        raise InputError(f"{path}: not a NumPy .npy or .npz file")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: corrupt or unreadable ({_first_line(e)})") from None


def _first_line(error):
    """The first line of an exception's message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
