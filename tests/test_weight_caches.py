"""torchvision's files in the registry (SHA-256 prefix checked on download), and the weights people already
have: Keras's cache and torch.hub's, used in place when their hash matches and never modified. Against a real
HTTP server on 127.0.0.1 (tests/test_fetch.py's), no mocks."""
import hashlib
import os

import numpy as np
import pytest


import fbi_ref
from fbi_ref.errors import DownloadError
from fbi_ref.io import weights_cache as fetch
from fbi_ref.io.weights_cache import KnownFile, cached_weights, download, fetch_weights, weights_dir, weights_path
from fbi_ref.io.zoo import SCALE_FREE_FBI_DEFAULTS
from tests.test_fetch import PAYLOAD, PAYLOAD_MD5, files_in, home, server  # noqa: F401 (fixtures)

PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def test_registry_knows_torchvisions_vgg16_and_vgg19():
    vgg16, vgg19 = fetch.KNOWN_WEIGHTS["torchvision_vgg16"], fetch.KNOWN_WEIGHTS["torchvision_vgg19"]
    assert vgg16.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert vgg19.url == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert (vgg16.sha256_prefix, vgg19.sha256_prefix) == ("397923af", "dcbb9e9d")
    assert vgg16.md5 is None and vgg16.checksum == "sha256 397923af..."


def test_download_checks_the_sha256_prefix(server, tmp_path):
    dest = download(server.url("/files/tiny.h5"), tmp_path / "a.pth", progress=False,
                    sha256_prefix=PAYLOAD_SHA256[:8].upper())
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="expected a sha256 starting 00000000"):
        download(server.url("/files/tiny.h5"), tmp_path / "b.pth", progress=False, sha256_prefix="00000000")
    assert files_in(tmp_path) == ["a.pth"]


def test_fetch_of_a_torchvision_file_that_does_not_match_leaves_nothing(server, home):
    with pytest.raises(DownloadError, match="sha256 starting 397923af"):
        fetch_weights("torchvision_vgg16", url=server.url("/files/tiny.h5"), progress=False)
    assert files_in(weights_dir()) == [] and cached_weights("torchvision_vgg16") is None


def put(folder, name, data):
    """Write a file into a cache folder; (path, its stat) to check later that it was left alone."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path, os.stat(path)


def test_keras_cache_is_used_in_place_when_its_md5_matches(home, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny", KnownFile("http://127.0.0.1/x/tiny_keras.h5", PAYLOAD_MD5))
    path, before = put(tmp_path / "keras" / "models", "tiny_keras.h5", PAYLOAD)
    assert weights_path("tiny") == path
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size) and path.read_bytes() == PAYLOAD
    assert files_in(home) == []  # nothing copied


def test_keras_cache_file_with_another_md5_is_not_used(home, tmp_path, monkeypatch):
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny", KnownFile("http://127.0.0.1/x/tiny_keras.h5", PAYLOAD_MD5))
    put(tmp_path / "keras" / "models", "tiny_keras.h5", PAYLOAD[:-1])
    assert cached_weights("tiny") is None


def test_default_keras_cache_is_home_dot_keras(home, tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "tiny", KnownFile("http://127.0.0.1/x/tiny_keras.h5", PAYLOAD_MD5))
    path, _ = put(tmp_path / "user" / ".keras" / "models", "tiny_keras.h5", PAYLOAD)
    assert weights_path("tiny") == path


def test_load_model_finds_torchvision_weights_in_torch_hubs_cache(home, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from tests.vgg_torch import CFGS, VGG
    scratch = tmp_path / "scratch.pth"
    torch.save(VGG(CFGS["vgg11"], width=8, fc=64, classes=1000).state_dict(), scratch)
    data = scratch.read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    monkeypatch.setitem(fetch.KNOWN_WEIGHTS, "torchvision_vgg16",
                        KnownFile(f"http://127.0.0.1/models/vgg11-{prefix}.pth", sha256_prefix=prefix))
    path, before = put(tmp_path / "torch" / "hub" / "checkpoints", f"vgg11-{prefix}.pth", data)
    model = fbi_ref.load_model("torchvision_vgg16")
    assert model.preprocessing.name == "torchvision" and model.class_names[0] == "tench"
    assert model.fbi_defaults == SCALE_FREE_FBI_DEFAULTS  # torchvision's inputs are not on the caffe scale
    assert np.isfinite(model.forward(np.zeros((1, 224, 224, 3), np.float32)).logits).all()
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and files_in(home) == []
