"""The weights cache: where known weight files live on disk, and a safe downloader for them.

Files live in $FBI_REF_HOME/weights (default ~/.cache/fbi_ref/weights) under the file names
Keras and torchvision use. A file that Keras already downloaded ($KERAS_HOME/models/, default
~/.keras/models/) or torchvision did ($TORCH_HOME/hub/checkpoints/, default ~/.cache/torch/hub/checkpoints/)
is used where it is, after its hash is checked, and never modified.
A download is written to a hidden temporary file next to its destination, checked against the
announced size and the known hash (Keras's MD5; the SHA-256 prefix torchvision's file names carry), and only
then renamed onto the destination (atomic on one file system): an interrupted or corrupt download never sits
where a finished one belongs.
"""
from __future__ import annotations

import glob
import hashlib
import http.client
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fbi_ref.errors import DownloadError, InputError, ModelFileError
from fbi_ref.io.locks import try_lock
from fbi_ref.io.paths import output_file, remove_stale_parts, replace, temporary_beside

CHUNK_SIZE = 1 << 20  # 1 MiB: few system calls, little memory
# A whole download must finish within this many seconds (VGG16's 528 MB need 9 minutes at 1 MB/s), as well as
# bring something within `timeout` on every read: a server that trickles a byte every few seconds is stopped too.
DEFAULT_DEADLINE = 3600.0
DEFAULT_HOME = "~/.cache/fbi_ref"
SIZE_MARGIN = 0.1  # a known file may come 10 % (+ 1 MiB) larger than its size before a download is stopped
DEFAULT_MAX_BYTES = int(os.environ.get("FBI_REF_MAX_DOWNLOAD_BYTES", 4 * 2**30))  # a download of an unknown file
KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications"
TORCHVISION_MODELS = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class KnownFile:
    """A weights file fbi_ref can fetch: its URL and the MD5 of its content, or the first hex digits of its
    SHA-256 (torchvision names its files NAME-<those digits>.pth, and torch.hub checks only them)."""
    url: str
    md5: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None  # bytes: a download stops once it passes this by SIZE_MARGIN (the hash decides the rest)

    @property
    def max_bytes(self) -> int:
        """The most bytes a download of this file may bring before it is stopped."""
        return int(self.size * (1 + SIZE_MARGIN)) + 2**20 if self.size else DEFAULT_MAX_BYTES

    @property
    def filename(self) -> str:
        """The file name at the end of the URL (also Keras's and torch.hub's cache file name)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def checksum(self) -> str:
        """The expected hash as text: 'md5 <32 hex>' or 'sha256 <prefix>...'."""
        return f"md5 {self.md5}" if self.md5 else f"sha256 {self.sha256_prefix}..."

    def matches(self, md5: str | None, sha256: str | None) -> bool:
        """True when the digests of a file's content are this file's."""
        if self.md5 is not None:
            return md5 == self.md5.lower()
        return sha256 is not None and sha256.startswith(self.sha256_prefix.lower())


def _torchvision(name: str, size: int) -> KnownFile:
    """A torchvision file, whose name ends with the first 8 hex digits of its SHA-256."""
    return KnownFile(f"{TORCHVISION_MODELS}/{name}.pth", sha256_prefix=name.rsplit("-", 1)[1], size=size)


KNOWN_WEIGHTS = {
    "vgg16": KnownFile(
        f"{KERAS_APPLICATIONS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        "64373286793e3c8b2b4e3219cbf3544b", size=553_467_096),
    "vgg16_notop": KnownFile(
        f"{KERAS_APPLICATIONS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc", size=58_889_256),
    # The two VGG19 hashes are copied from keras.applications.vgg19 (its get_file file_hash
    # values; 32 hex digits, which Keras treats as MD5), not computed here.
    "vgg19": KnownFile(
        f"{KERAS_APPLICATIONS}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "cbe5617147190e668d6c5d5026f83318", size=574_710_816),
    "vgg19_notop": KnownFile(
        f"{KERAS_APPLICATIONS}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6", size=80_134_624),
    # torchvision.models.VGG16_Weights.IMAGENET1K_V1 and VGG19_Weights.IMAGENET1K_V1 (torchvision preprocessing;
    # their meta["_file_size"], 527.796 and 548.051 MiB, agrees with these sizes). The Keras sizes are the files'
    # as published; only the download cap reads any of them.
    "torchvision_vgg16": _torchvision("vgg16-397923af", 553_433_881),
    "torchvision_vgg19": _torchvision("vgg19-dcbb9e9d", 574_673_361),
}


# --- the cache ------------------------------------------------------------------------------

def cache_home() -> Path:
    """The cache folder: $FBI_REF_HOME, or ~/.cache/fbi_ref when that is unset or empty."""
    return Path(os.environ.get("FBI_REF_HOME") or DEFAULT_HOME).expanduser()


def weights_dir() -> Path:
    """The folder holding weight files: <cache_home()>/weights."""
    return cache_home() / "weights"


def known_file(name: str) -> KnownFile:
    """The registry entry for `name`; InputError naming the known names otherwise."""
    if name not in KNOWN_WEIGHTS:
        raise InputError(f"unknown weights {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    return KNOWN_WEIGHTS[name]


def weights_file(name: str) -> Path:
    """Where the weights `name` are (or would be) cached."""
    return weights_dir() / known_file(name).filename


def cached_weights(name: str) -> Path | None:
    """The cached file of the known weights `name`, or None when it is not there.

    fbi_ref's own cache first: there only the file's existence is checked (hashing 500 MB takes a second;
    use verify() or fetch_weights() to check it). Then Keras's or torch.hub's cache, whose files are used only
    when their hash matches (checked once per process and file version), and only read.
    """
    path = weights_file(name)
    if path.is_file():
        return path
    known = known_file(name)
    for folder in foreign_caches(known):
        candidate = folder / known.filename
        if candidate.is_file() and _verified_once(candidate, known):
            return candidate
    return None


def foreign_caches(known: KnownFile) -> list[Path]:
    """The folders where Keras (for its files) or torch.hub (for torchvision's) keeps downloaded weights."""
    if known.md5 is not None:  # a Keras file
        keras_home = os.environ.get("KERAS_HOME")
        return [Path(keras_home).expanduser() / "models"] if keras_home else [Path("~/.keras/models").expanduser()]
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return [Path(torch_home).expanduser() / "hub" / "checkpoints"]


_VERIFIED = {}  # (path, size, mtime_ns) -> bool: a foreign cache's file is hashed once per process


def _verified_once(path: Path, known: KnownFile) -> bool:
    """True when the file at `path` has the known hash (remembered while its size and mtime stay the same)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = verify_known(path, known)
    return _VERIFIED[key]


def verify_known(path: str | os.PathLike, known: KnownFile) -> bool:
    """True when `path` is a file whose content has the known file's hash (MD5 or SHA-256 prefix)."""
    if not Path(path).is_file():
        return False
    if known.md5 is not None:
        return known.matches(md5sum(path), None)
    return known.matches(None, sha256sum(path))


def list_cached() -> dict[str, Path]:
    """The known weights present in the cache, as {name: path}."""
    found = {name: cached_weights(name) for name in KNOWN_WEIGHTS}
    return {name: path for name, path in found.items() if path is not None}


def weights_path(name: str) -> Path:
    """The cached file of the known weights `name`.

    Raises ModelFileError with instructions when it is missing: the command that downloads
    it and the folder to copy an existing copy of the file into.
    """
    path = cached_weights(name)
    if path is None:
        raise ModelFileError(missing_weights_message(name))
    return path


def missing_weights_message(name: str) -> str:
    """One line telling the user how to get the weights `name` into the cache."""
    known = known_file(name)
    elsewhere = " or ".join(f"{folder}/" for folder in foreign_caches(known))
    return (f"{name} weights not found at {weights_file(name)} nor in {elsewhere}: run `fbi-ref weights fetch"
            f" {name}` to download them ({known.url}), or copy a {known.filename} you already have"
            f" into {weights_dir()}/")


def fetch_weights(name: str, force: bool = False, url: str | None = None,
                  progress: bool = True, deadline: float = DEFAULT_DEADLINE) -> Path:
    """Make sure the known weights `name` are in the cache, downloading them if needed.

    A cached file whose MD5 matches is used as is (no network access) unless force=True.
    A missing or mismatching file is downloaded from `url` (default: the registry URL; pass
    a mirror or a local server's address to override it) and checked against the registry
    MD5. Returns the cached path. Raises InputError for an unknown name, DownloadError when
    the download fails.
    """
    known = known_file(name)
    dest = weights_file(name)
    if not force and verify_known(dest, known):
        return dest
    return download(url or known.url, dest, md5=known.md5, progress=progress, deadline=deadline,
                    sha256_prefix=known.sha256_prefix, max_bytes=known.max_bytes)


def md5sum(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    """The MD5 of a file as 32 lowercase hex digits, read in chunks (weights are ~500 MB)."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False), chunk_size)  # a checksum: allowed under FIPS


def sha256sum(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> str:
    """The SHA-256 of a file as 64 lowercase hex digits, read in chunks."""
    return _file_digest(path, hashlib.sha256(), chunk_size)


def digests(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> tuple[str, str]:
    """(MD5, SHA-256) of a file in one read (weights are ~500 MB: reading them once, not twice)."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    _file_digest(path, (md5, sha256), chunk_size)
    return md5.hexdigest(), sha256.hexdigest()


def _file_digest(path, digest, chunk_size):
    """Feed a file to a hashlib digest (or a tuple of them) in chunks; the (first one's) hex digest."""
    every = digest if isinstance(digest, tuple) else (digest,)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            for d in every:
                d.update(chunk)
    return every[0].hexdigest()


def verify(path: str | os.PathLike, md5: str) -> bool:
    """True when `path` is a file whose MD5 is `md5` (any case); False otherwise or if missing."""
    return Path(path).is_file() and md5sum(path) == md5.lower()


# --- downloading ----------------------------------------------------------------------------

def download(url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True,
             timeout: float = 30, deadline: float = DEFAULT_DEADLINE, sha256_prefix: str | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Download `url` to `dest` atomically, checking its size and (optionally) its MD5 or SHA-256 prefix.

    Streams into a hidden temporary file in dest's folder (created if needed), with a tqdm progress bar on
    stderr when progress=True and stderr is a terminal. The file is checked against the Content-Length
    header and `md5`, and only then renamed onto dest, replacing an older regular file there (a symlink or
    a special file at dest is refused). On any failure, Ctrl-C included, the temporary file is removed and
    dest is untouched; the temporary files of downloads that were killed (SIGKILL) are removed by the next
    download into the same folder. `timeout` (seconds) bounds the connection and each read, `deadline` the
    whole download, `max_bytes` its size: a server that announces or sends more is stopped there. Raises
    DownloadError with a one-line message: cannot connect, HTTP error status, connection dropped or stalled
    mid-file, too slow, too large, checksum mismatch, or a folder that cannot be written.
    """
    dest = output_file(dest)
    tmp = temporary_beside(dest, secrets.token_hex(4))
    try:
        actual_md5, actual_sha256 = _download_to(url, tmp, timeout, time.monotonic() + deadline, progress,
                                                 label=dest.name, max_bytes=max_bytes)
        if md5 is not None and actual_md5 != md5.lower():
            raise DownloadError(
                f"checksum mismatch for {url}: expected md5 {md5.lower()}, got {actual_md5}")
        if sha256_prefix is not None and not actual_sha256.startswith(sha256_prefix.lower()):
            raise DownloadError(f"checksum mismatch for {url}: expected a sha256 starting {sha256_prefix.lower()}, "
                                f"got {actual_sha256}")
        _replace(tmp, dest)
    except BaseException:  # Ctrl-C included: never leave a partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _download_to(url: str, tmp: Path, timeout: float, deadline: float, progress: bool, label: str,
                 max_bytes: int) -> str:
    """Stream `url` into the new file `tmp` (locked while it is written); return the content's (MD5, SHA-256)."""
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(tmp.parent / label)
        # 'xb' never reuses an existing file, and unlike mkstemp (0600) it lets the umask decide.
        with open(tmp, "xb") as out, Watchdog(deadline) as watchdog:
            try_lock(out)  # held while it writes: another process's remove_stale_parts leaves the file alone
            with _open_url(url, timeout, watchdog) as response:
                return _stream(response, out, url, deadline, progress, label, watchdog, max_bytes)
    except OSError as e:  # network errors are DownloadError already: these are local disk ones
        raise DownloadError(f"cannot write {tmp.parent / label}: {e.strerror or e}") from None


class Watchdog:
    """Shuts the download's connections down when its deadline passes, wherever it waits: for the headers of a
    server that sends a line a second, or inside a read (each read alone is bounded by the stall timeout)."""

    def __init__(self, deadline: float):
        self.deadline, self.expired, self.sockets = deadline, False, []
        # threading's waits take at most TIMEOUT_MAX seconds (about 292 years): a later deadline waits that long
        self.timer = threading.Timer(min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX), self._expire)
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()

    def watch(self, sock):
        """Shut this socket down at the deadline."""
        self.sockets.append(sock)
        if self.expired:
            self._expire()

    def _expire(self):
        self.expired = True
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def opener(self):
        """A urllib opener whose HTTP and HTTPS connections this watchdog watches."""
        watchdog = self

        class Watched(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                watchdog.watch(self.sock)

        class WatchedTLS(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                watchdog.watch(self.sock)

        class Plain(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Watched, req)

        class Secure(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(WatchedTLS, req, context=self._context)
        return urllib.request.build_opener(Plain, Secure)


def _too_slow(url: str, received: int, expected) -> DownloadError:
    """The error of a download whose deadline passed."""
    return DownloadError(f"download of {url} too slow: {received} of {expected or '?'} bytes when its deadline passed")


def _open_url(url: str, timeout: float, watchdog: Watchdog):
    try:
        return watchdog.opener().open(url, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as error:
        if watchdog.expired:
            raise _too_slow(url, 0, None) from None
        raise _open_error(url, error) from None


def _open_error(url, error) -> DownloadError:
    """The one-line DownloadError for a failure to open `url`."""
    if isinstance(error, urllib.error.HTTPError):
        error.close()
        return DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}")
    if isinstance(error, urllib.error.URLError):
        return DownloadError(f"cannot connect to {url}: {error.reason}")
    if isinstance(error, ValueError):  # not a URL urllib understands
        return DownloadError(f"cannot download {url!r}: {error}")
    return DownloadError(f"cannot download {url}: {error or type(error).__name__}")  # timeouts, resets, garbage


def _stream(response, out, url: str, deadline: float, progress: bool, label: str, watchdog: Watchdog,
            max_bytes: int) -> tuple:
    expected = _content_length(response)  # None when the server does not say
    if expected is not None and expected > max_bytes:
        raise DownloadError(f"{url} announces {expected:,} bytes, more than the {max_bytes:,} the file can take")
    digest, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    received = 0
    # disable=None: tqdm draws only when stderr is a terminal
    with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              disable=None if progress else True) as bar:
        while chunk := _read_chunk(response, url, received, expected, watchdog):
            out.write(chunk)
            digest.update(chunk)
            sha256.update(chunk)
            received += len(chunk)
            if received > max_bytes:  # an endless body: stop, whatever the headers said
                raise DownloadError(f"{url} sent more than the {max_bytes:,} bytes the file can take; stopped")
            bar.update(len(chunk))
            if time.monotonic() > deadline:
                raise _too_slow(url, received, expected)
    if watchdog.expired:  # the watchdog shut the connection: a short read, not an end of file
        raise _too_slow(url, received, expected)
    # http.client returns b'' rather than raising when the connection closes early.
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} stopped after {received} of {expected} bytes")
    return digest.hexdigest(), sha256.hexdigest()


def _read_chunk(response, url: str, received: int, expected: int | None, watchdog: Watchdog) -> bytes:
    """What the connection has now, up to CHUNK_SIZE bytes (read1: one receive, so every byte is counted)."""
    try:
        return response.read1(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
        if watchdog.expired:
            raise _too_slow(url, received, expected) from None
        total = "?" if expected is None else expected
        raise DownloadError(f"connection to {url} dropped or stalled after {received} of {total} bytes:"
                            f" {e or type(e).__name__}") from None


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _replace(tmp: Path, dest: Path) -> None:
    try:
        replace(tmp, dest)
    except OSError as e:
        raise DownloadError(f"cannot write {dest}: {e.strerror or e}") from None
