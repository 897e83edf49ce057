"""The weights cache and downloader, against a real HTTP server on 127.0.0.1 (no mocks)."""
import fcntl
import hashlib
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import re

import pytest

from fbi_ref.io import weights_cache as fetch
from fbi_ref.io.paths import remove_stale_parts
from fbi_ref.errors import DownloadError, InputError, ModelFileError
from fbi_ref.io.weights_cache import (KnownFile, cache_home, cached_weights, download, fetch_weights,
                           list_cached, md5sum, verify, weights_dir, weights_path)

PAYLOAD = os.urandom(3 * fetch.CHUNK_SIZE + 12345)  # several chunks and a ragged end
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Routes: /files/<name> serves the file; /drop/<name> promises 1000 bytes more than it
    sends, then closes; /nolength/<name> sends no Content-Length; anything else is a 404."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route, _, name = self.path.lstrip("/").partition("/")
        body = self.server.files.get(name)
        if body is None or route not in ("files", "drop", "nolength"):
            self.send_error(404)
            return
        self.send_response(200)
        if route != "nolength":
            extra = 1000 if route == "drop" else 0
            self.send_header("Content-Length", str(len(body) + extra))
        self.end_headers()
        self.wfile.write(body)  # HTTP/1.0: the server closes the connection after this

    def log_message(self, *args):
        """Keep the test output quiet."""


class Server:
    """A real HTTP server in a background thread, recording every path requested."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.files = {"tiny.h5": PAYLOAD}
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        """The full URL of `path` on this server."""
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch):
    # A proxy from the environment must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty FBI_REF_HOME (and empty Keras and torch.hub caches)."""
    path = tmp_path / "home"
    monkeypatch.setenv("FBI_REF_HOME", str(path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return path


@pytest.fixture
def tiny(server, home, monkeypatch):
    """A registry entry 'tiny' served by the local server."""
    entry = KnownFile(server.url("/files/tiny.h5"), PAYLOAD_MD5)
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny", entry)
    return entry


def files_in(folder: Path) -> list:
    """Every file name in `folder`, hidden ones included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- download -------------------------------------------------------------------------------

def test_download_good_file(server, tmp_path):
    dest = tmp_path / "new" / "folder" / "tiny.h5"
    got = download(server.url("/files/tiny.h5"), dest, md5=PAYLOAD_MD5, progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert files_in(dest.parent) == ["tiny.h5"]


def test_download_accepts_uppercase_md5_and_no_md5(server, tmp_path):
    download(server.url("/files/tiny.h5"), tmp_path / "a", md5=PAYLOAD_MD5.upper(), progress=False)
    download(server.url("/files/tiny.h5"), tmp_path / "b", progress=False)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == PAYLOAD


def test_download_without_content_length(server, tmp_path):
    dest = tmp_path / "tiny.h5"
    download(server.url("/nolength/tiny.h5"), dest, md5=PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_progress_bar_goes_to_stderr_only_when_it_is_a_terminal(server, tmp_path, capsys):
    download(server.url("/files/tiny.h5"), tmp_path / "tiny.h5", progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar
    main, secondary = pty.openpty()  # a real terminal for a child process's stderr, 120 columns wide
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    code = ("import sys; from fbi_ref.io.weights_cache import download; "
            f"download({server.url('/files/tiny.h5')!r}, {str(tmp_path / 'b.h5')!r})")
    child = subprocess.run([sys.executable, "-c", code], stderr=secondary, stdout=subprocess.PIPE, timeout=120,
                           env={**os.environ, "no_proxy": "127.0.0.1"})
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal is closed once everything was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert child.returncode == 0 and b"b.h5" in shown and b"100%" in shown, shown


def assert_download_error(url, folder, *words):
    """download(url) into `folder` fails with a one-line DownloadError and leaves no file."""
    with pytest.raises(DownloadError, match=re.escape(words[0]) if words else url) as info:
        download(url, folder / "tiny.h5", md5=PAYLOAD_MD5, progress=False)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert files_in(folder) == []
    return message


def test_wrong_md5_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download(server.url("/files/tiny.h5"), tmp_path / "tiny.h5", md5="0" * 32, progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message and "0" * 32 in message and PAYLOAD_MD5 in message
    assert files_in(tmp_path) == []


def test_wrong_md5_keeps_the_previous_file(server, tmp_path):
    dest = tmp_path / "tiny.h5"
    dest.write_bytes(b"old but good")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(server.url("/files/tiny.h5"), dest, md5="0" * 32, progress=False)
    assert dest.read_bytes() == b"old but good"
    assert files_in(tmp_path) == ["tiny.h5"]


def test_connection_dropped_mid_file(server, tmp_path):
    message = assert_download_error(server.url("/drop/tiny.h5"), tmp_path, "stopped after")
    assert f"{len(PAYLOAD)} of {len(PAYLOAD) + 1000} bytes" in message


def test_http_404(server, tmp_path):
    assert_download_error(server.url("/files/nothing.h5"), tmp_path, "HTTP 404")


def test_connection_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_download_error(f"http://127.0.0.1:{port}/tiny.h5", tmp_path, "cannot connect")


def test_not_a_url(tmp_path):
    assert_download_error("not a url", tmp_path, "not a url")


# --- the cache ------------------------------------------------------------------------------

def test_fbi_ref_home_is_honoured(home):
    assert cache_home() == home and weights_dir() == home / "weights"


def test_default_home(monkeypatch, tmp_path):
    monkeypatch.delenv("FBI_REF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".cache" / "fbi_ref" / "weights"


def test_fetch_downloads_then_reuses_the_cache(server, tiny):
    assert cached_weights("tiny") is None and list_cached() == {}
    path = fetch_weights("tiny", progress=False)
    assert path == weights_dir() / "tiny.h5" and path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert fetch_weights("tiny", progress=False) == path
    assert len(server.requests) == 1  # verified cache hit: no request
    assert cached_weights("tiny") == path and list_cached() == {"tiny": path}


def test_force_downloads_again(server, tiny):
    fetch_weights("tiny", progress=False)
    fetch_weights("tiny", force=True, progress=False)
    assert len(server.requests) == 2


def test_corrupt_cached_file_is_replaced(server, tiny):
    path = fetch_weights("tiny", progress=False)
    path.write_bytes(b"damaged")
    assert fetch_weights("tiny", progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_url_override(server, home, monkeypatch):
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny",
                        KnownFile(server.url("/files/gone/tiny.h5"), PAYLOAD_MD5))
    path = fetch_weights("tiny", url=server.url("/files/tiny.h5"), progress=False)
    assert path.read_bytes() == PAYLOAD and path.name == "tiny.h5"


def test_failed_fetch_leaves_cache_empty(server, home, monkeypatch):
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny",
                        KnownFile(server.url("/drop/tiny.h5"), PAYLOAD_MD5))
    with pytest.raises(DownloadError, match="tiny.h5"):
        fetch_weights("tiny", progress=False)
    assert files_in(weights_dir()) == [] and cached_weights("tiny") is None


def test_missing_weights_message(home):
    with pytest.raises(ModelFileError, match="fbi-ref weights fetch vgg16") as info:
        weights_path("vgg16")
    message = str(info.value)
    assert "\n" not in message
    assert "fbi-ref weights fetch vgg16" in message
    assert str(weights_dir()) in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in message


def test_weights_path_finds_a_copied_file(home):
    weights_dir().mkdir(parents=True)
    copied = weights_dir() / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    copied.write_bytes(b"x")
    assert weights_path("vgg16_notop") == copied


def test_unknown_name(home):
    with pytest.raises(InputError, match="known: vgg16, vgg16_notop"):
        fetch_weights("resnet50")


def test_registry():
    assert fetch.KNOWN_WEIGHTS["vgg16"].url == (
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert fetch.KNOWN_WEIGHTS["vgg16"].md5 == "64373286793e3c8b2b4e3219cbf3544b"
    for name, entry in fetch.KNOWN_WEIGHTS.items():
        if name.startswith("torchvision_"):  # tests/test_weight_caches.py checks these
            continue
        assert entry.filename.startswith(name.split("_")[0] + "_weights_tf_dim_ordering")
        assert entry.filename.endswith("_notop.h5") == name.endswith("_notop")
        assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0


def test_md5sum_and_verify(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)
    assert md5sum(path) == md5sum(path, chunk_size=1000) == PAYLOAD_MD5
    assert verify(path, PAYLOAD_MD5) and verify(path, PAYLOAD_MD5.upper())
    assert not verify(path, "0" * 32)
    assert not verify(tmp_path / "missing.bin", PAYLOAD_MD5)


# --- a deadline, stale temporary files, honest counts -------------------------------------------------

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


def serving(monkeypatch, handler):
    """A real HTTP server of `handler` on 127.0.0.1 in a background thread: yields its base URL."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def trickle(monkeypatch):
    yield from serving(monkeypatch, Trickle)


def test_a_trickling_server_is_stopped_by_the_deadline(trickle, tmp_path):
    started = time.perf_counter()
    with pytest.raises(DownloadError, match="too slow"):
        fetch.download(f"{trickle}/slow", tmp_path / "w.h5", progress=False, timeout=5, deadline=1.5)
    assert time.perf_counter() - started < 4
    assert list(tmp_path.iterdir()) == []


def test_a_stall_reports_the_bytes_that_did_arrive(trickle, tmp_path):
    with pytest.raises(DownloadError, match="after 100000 of 200000 bytes"):
        fetch.download(f"{trickle}/stall", tmp_path / "w.h5", progress=False, timeout=1)


def test_the_next_download_removes_the_parts_that_killed_downloads_left(tmp_path):
    dest = tmp_path / "w.h5"
    stale = tmp_path / ".w.h5.dead0001.part"
    stale.write_bytes(b"half a file")
    live = tmp_path / ".w.h5.live0002.part"
    live.write_bytes(b"being written")
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # a download still running holds its lock
        removed = remove_stale_parts(dest)
    assert removed == [stale] and not stale.exists() and live.exists()


class SlowHeaders(BaseHTTPRequestHandler):
    """Sends the status line, then one header line a second, for ever."""

    def do_GET(self):
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(1000):
                self.wfile.write(f"X-Slow-{i}: yes\r\n".encode())
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
            fetch.download(f"http://127.0.0.1:{server.server_port}/x", tmp_path / "w.h5", progress=False,
                                   timeout=5, deadline=1.5)
        assert time.perf_counter() - started < 4
    finally:
        server.shutdown()
        server.server_close()


# --- hardening round 2 (issue 24) -----------------------------------------------------------------------

class Endless(BaseHTTPRequestHandler):
    """/lying: Content-Length 1e15, then zeros until the client goes; /endless: no length, zeros until it goes."""

    def do_GET(self):
        self.send_response(200)
        if self.path == "/lying":
            self.send_header("Content-Length", str(10**15))
        self.end_headers()
        try:
            while True:
                self.wfile.write(bytes(2**16))
        except OSError:  # the client stopped reading
            pass

    def log_message(self, *args):
        """Keep the test output quiet."""


@pytest.fixture
def endless(monkeypatch):
    yield from serving(monkeypatch, Endless)


@pytest.mark.parametrize("route, says", [("/lying", "announces 1,000,000,000,000,000 bytes"),
                                         ("/endless", "sent more than the 5,242,880 bytes")])
def test_a_download_stops_at_the_size_the_file_can_take(endless, tmp_path, route, says):
    """A server announcing 1e15 bytes, or sending an endless body, wrote 1.2 GB into the cache for a 56 MiB
    file: the download is refused at once, or stopped at the cap, and leaves nothing behind."""
    with pytest.raises(DownloadError, match=says):
        download(endless + route, tmp_path / "w.h5", progress=False, max_bytes=5 * 2**20)
    assert files_in(tmp_path) == []


def test_every_known_file_has_a_size_cap_near_its_size():
    for name, known in fetch.KNOWN_WEIGHTS.items():
        assert known.size and known.size < known.max_bytes <= known.size * 1.1 + 2**20, name


def test_a_deadline_past_what_a_timer_can_wait_is_still_a_deadline(server, tmp_path):
    """--deadline 1e10 made the watchdog's timer raise OverflowError (and the deadline was not enforced)."""
    got = download(server.url("/files/tiny.h5"), tmp_path / "t.h5", md5=PAYLOAD_MD5, progress=False, deadline=1e10)
    assert got.read_bytes() == PAYLOAD
