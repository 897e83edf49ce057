"""Paths a command reads and writes: inputs must be regular files, outputs never replace what they should not.

Every file fbi_ref writes goes through `output_file` first: an output that exists must be a regular file
(a symlink, a FIFO, a device or a folder is refused, never replaced), and no output may be one of the
command's inputs (an image, a model, an array file), which it would overwrite before or after reading it.
`replace` then renames the finished temporary file onto it, so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import glob
import os
import stat
from pathlib import Path

from fbi_ref.errors import FbiRefError, InputError, ModelFileError
from fbi_ref.io.locks import try_lock

_KINDS = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def shown(path) -> str:
    """A path as text that can always be printed and drawn (undecodable bytes of a file name as \\xNN)."""
    text = os.fspath(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def kind_of(mode: int) -> str:
    """'regular file', 'symbolic link', 'FIFO', ... for an lstat mode."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "special file"


def input_file(path, what: str = "file", error=InputError) -> Path:
    """`path` as a Path, if it names an existing regular file (symlinks to one are fine); `error` otherwise.

    A FIFO or a device (/dev/zero) would be read forever or block; a folder is not a file.
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InputError(f"the {what} must be given as a path (str or os.PathLike), not {type(path).__name__}")
    if not os.fspath(path):
        raise error(f"the {what} path is empty")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{shown(path)}: no such file") from None
    except OSError as e:
        raise error(f"{shown(path)}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{shown(path)}: is a {kind_of(mode)}, not a {what}")
    return path


def output_file(path, inputs=()) -> Path:
    """`path` as a Path, checked before anything is written: InputError if it exists and is not a regular file,
    or if it is one of `inputs` (paths the command reads)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise InputError(f"{shown(path)}: {e.strerror or e}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise InputError(f"{shown(path)}: exists and is a {kind_of(mode)}; refusing to replace it with an output file")
    for source in inputs:
        if same_file(path, source):
            raise InputError(f"{shown(path)}: is also an input of this command; refusing to overwrite it")
    return path


def same_file(a, b) -> bool:
    """True when two paths name the same file (or would: the same absolute path, resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, RuntimeError):  # a symlink loop: it names no file, so not this one
            return False


def temporary_beside(path: Path, tag: str) -> Path:
    """A hidden temporary file name next to `path` (same folder, so the final rename is atomic); open it with
    mode 'x', which never follows a symlink planted under that name."""
    return path.with_name(f".{path.name}.{tag}.part")


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the temporary files of earlier writes of `path` that nobody is writing any more.

    A write (a download, `write_atomically`) holds an exclusive lock on its temporary file while it writes; a
    process that was killed holds nothing, so a temporary file that can be locked is stale. Where the platform
    has no lock to ask, nothing is removed. Returns the files removed.
    """
    removed = []
    for part in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.part"):
        try:
            # never through a symlink, never blocking on a FIFO: only a regular file can be a write's leftover
            fd = os.open(part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            with os.fdopen(fd, "rb") as f:
                stale = stat.S_ISREG(os.fstat(f.fileno()).st_mode) and try_lock(f)  # False while its writer
            if stale:  # lives; None: no lock to ask, so keep it. Removed after closing: Windows keeps open files
                part.unlink()
                removed.append(part)
        except OSError:
            continue
    return removed


def replace(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` onto `path`, checking once more that `path` is not something else meanwhile."""
    output_file(path)
    os.replace(tmp, path)


def write_atomically(path, write, inputs=()) -> Path:
    """Write a file by write(binary file object) into a new hidden temporary file beside it, then rename it into
    place: checked first as `output_file` checks; never through a symlink planted under the temporary name
    (mode 'x'); on any failure nothing is left behind and the error names `path`, and what a killed earlier
    write of the same file left behind is removed first."""
    path = output_file(path, inputs)
    remove_stale_parts(path)  # what a killed earlier write of this file left behind
    tmp = temporary_beside(path, os.urandom(4).hex())
    try:
        f = open(tmp, "xb")
    except OSError as e:
        raise InputError(f"{shown(path)}: cannot write: {e.strerror or e}") from None
    try:
        with f:
            try_lock(f)  # held while it writes: another process's remove_stale_parts leaves the file alone
            write(f)
        replace(tmp, path)
    except OSError as e:
        raise InputError(f"{shown(path)}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)  # ours: gone after the rename, or removed after a failure
    return path


def write_text(path, text: str, inputs=()) -> Path:
    """Write a text file atomically (see write_atomically)."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")), inputs)


@contextlib.contextmanager
def errors_named(path, what, library_errors=(Exception,)):
    """Inside, fbi_ref's own errors get the file's name in front, and `library_errors` (a damaged file, as the
    library reading it reports it) become one ModelFileError line: '<file>: not a readable <what> (<error>)'."""
    try:
        yield
    except FbiRefError as error:
        raise type(error)(f"{shown(path)}: {error}") from error
    except FileNotFoundError as error:
        raise ModelFileError(f"{shown(path)}: no such file") from error
    except library_errors as error:
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        raise ModelFileError(f"{shown(path)}: not a readable {what} ({type(error).__name__}: {detail})") from error
