"""torchvision VGG state dicts: every activation, the logits, gradient and guided backprop equal torch's own
forward and autograd (torchvision's module tree, random weights, batch norm with far-from-identity statistics),
from .safetensors (no torch needed to read) and from .pth; bad files fail with one typed line.

The torch side is tests/vgg_torch.py, torchvision's VGG rebuilt with torchvision's state-dict keys. Widths are
divided by 8 for speed (the structure, the 224 x 224 input and the 7 x 7 average pool are torchvision's);
the full VGG16 runs once (slow).
"""
import copy
import sys

import numpy as np
import pytest

import fbi_ref
from fbi_ref.errors import ArchitectureError, InputError, ModelFileError
from fbi_ref.io.torch_files import BN_EPS, chw_rows_to_hwc, torchvision_state_dict, torchvision_vgg
from fbi_ref.nn.preprocessing import CAFFE, TORCHVISION, preprocessing
from fbi_ref.nn.weights import fold_batch_norm

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
from tests.vgg_torch import CFGS, VGG, activations, input_gradient  # noqa: E402 (needs torch)

pytestmark = pytest.mark.torch
RTOL = 1e-5


def small(name="vgg11", batch_norm=False, classes=10, seed=0):
    """A torchvision VGG of the given depth at 1/8 width (fc 64), random weights."""
    return VGG(CFGS[name], batch_norm, width=8, fc=64, classes=classes, seed=seed)


def images(n=2, seed=0):
    """n torchvision-preprocessed random images (n, 224, 224, 3)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3)).astype(np.float32)
    return TORCHVISION.forward(rgb)


def assert_close(ours, theirs, what):
    """Equal within RTOL of the array's largest magnitude (float32 sums in another order)."""
    theirs = np.asarray(theirs)
    scale = max(float(np.abs(theirs).max()), 1e-30)
    err = float(np.abs(ours - theirs).max())
    assert err <= RTOL * scale, f"{what}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"
    return err / scale


@pytest.fixture(scope="module", params=[("vgg11", False), ("vgg11", True), ("vgg13", True)],
                ids=["vgg11", "vgg11_bn", "vgg13_bn"])
def pair(request, tmp_path_factory):
    """(torch net, fbi_ref model loaded from a .safetensors file of its state dict)."""
    name, batch_norm = request.param
    net = small(name, batch_norm)
    path = tmp_path_factory.mktemp("tv") / f"{name}.safetensors"
    safetensors_numpy.save_file(net.state_dict_numpy(), str(path))
    return net, fbi_ref.load_model(path)


def test_every_activation_and_the_logits_equal_torchs(pair):
    net, model = pair
    x = images()
    fp = model.forward(x)
    with torch.no_grad():
        logits, acts = activations(net, x)
    assert set(acts) == {layer.name for layer in model.layers}
    for name, theirs in acts.items():
        ours = fp.outputs[name]
        theirs = theirs.numpy()
        if theirs.ndim == 4:
            theirs = theirs.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        assert_close(ours, theirs, name)
    assert_close(fp.logits, logits.numpy(), "logits")
    # and torch's own forward (the AdaptiveAvgPool2d and flatten included) gives the same logits
    with torch.no_grad():
        direct = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert_close(fp.logits, direct, "net(x)")


def folded_torch_net(model, cfg):
    """torch's plain VGG carrying the model's own (batch-norm-folded) weights, via the inverse conversion."""
    plain = VGG(cfg, batch_norm=False, width=8, fc=64, classes=model.num_classes)
    state = torchvision_state_dict(model.architecture())
    plain.load_state_dict({key: torch.from_numpy(value.copy()) for key, value in state.items()})
    return plain


@pytest.mark.parametrize("guided", [False, True], ids=["gradient", "guided_backprop"])
def test_gradient_and_guided_backprop_equal_torch_autograd(pair, guided):
    # In float64 on both sides, with the model's own weights: in float32 a different summation order moves
    # near-tie max-pool windows deep in the network, each of which changes a whole patch of the input's
    # gradient (3-4 % of its entries in measured cases, on identical weights); `fbi-ref compare` replays such
    # decisions, this test avoids them. For the _bn variants torch's side is the folded network (the gradient
    # of eval-mode batch norm is the folded conv's; the folding itself is tested by the forward pass above).
    net, model = pair
    if model.name.endswith("_bn"):
        net = folded_torch_net(model, CFGS[model.name.split("_")[1]])
    x = images(seed=1).astype(np.float64)
    method = "guided_backprop" if guided else "gradient"
    e = fbi_ref.explain(model.astype(np.float64), x, method)
    theirs = input_gradient(copy.deepcopy(net).double(), x, e.target, guided=guided)
    assert np.abs(theirs).max() > 0
    assert_close(e.attribution, theirs, method)


def test_fbi_runs_with_a_scale_free_default_threshold(pair):
    """The paper's tau = 10 (absolute) was set for caffe-scaled inputs; on torchvision's it empties the map."""
    from fbi_ref.io.zoo import SCALE_FREE_FBI_DEFAULTS
    _, model = pair
    assert model.fbi_defaults == SCALE_FREE_FBI_DEFAULTS
    e = fbi_ref.explain(model, images(1, seed=2), "fbi")
    assert e.attribution.shape == (1, 224, 224, 3) and np.isfinite(e.attribution).all()
    assert np.count_nonzero(e.attribution) > 0


def test_the_model_carries_torchvision_preprocessing(pair, tmp_path):
    from PIL import Image
    _, model = pair
    assert model.preprocessing is TORCHVISION and model.class_names is None
    path = tmp_path / "img.png"
    rgb = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    x = fbi_ref.load_image(path, model)
    t = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255  # torchvision's ToTensor
    t = (t - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    np.testing.assert_array_equal(x[0], t.numpy().transpose(1, 2, 0))  # Normalize: bit for bit
    low, high = model.preprocessing.bounds()
    np.testing.assert_allclose(low.ravel(), (0 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)
    np.testing.assert_allclose(high.ravel(), (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)
    fbi_ref.explain(model, x, "lrp_zplus")  # bounded by these, not by the caffe range


def test_pth_reads_the_same_as_safetensors(tmp_path):
    net = small("vgg11", True, seed=4)
    torch.save(net.state_dict(), tmp_path / "vgg.pth")
    safetensors_numpy.save_file(net.state_dict_numpy(), str(tmp_path / "vgg.safetensors"))
    a, b = fbi_ref.load_model(tmp_path / "vgg.pth"), fbi_ref.load_model(tmp_path / "vgg.safetensors")
    assert a.name == b.name == "torchvision_vgg11_bn"
    for la, lb in zip(a.layers, b.layers):
        for attr in ("kernel", "bias"):
            if hasattr(la, attr):
                np.testing.assert_array_equal(getattr(la, attr), getattr(lb, attr))


def rezipped(source, target, compress):
    """The zip `source` written again as Info-ZIP does: the members compress(name) says DEFLATE-compressed."""
    import zipfile
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            kind = zipfile.ZIP_DEFLATED if compress(info.filename) else zipfile.ZIP_STORED
            new.writestr(info.filename, old.read(info.filename), compress_type=kind)
    return target


@pytest.mark.parametrize("which", ["some", "all"])
def test_a_pth_rezipped_with_compressed_records_reads_as_torch_does(tmp_path, which):
    """torch.load(mmap=True) hands back a compressed record's bytes as the tensor (biases of 1e20 before the fix;
    with every record compressed, a false 'holds NaN'): such files are read without mmap, as torch reads them."""
    net = small("vgg11", True, seed=5)
    torch.save(net.state_dict(), tmp_path / "vgg.pth")
    safetensors_numpy.save_file(net.state_dict_numpy(), str(tmp_path / "vgg.safetensors"))
    data_records = lambda name: "/data/" in name  # noqa: E731 (the tensors' records)
    compress = {"some": lambda name: data_records(name) and int(name.rsplit("/", 1)[1]) % 2 == 0,
                "all": lambda name: True}[which]
    path = rezipped(tmp_path / "vgg.pth", tmp_path / "rezipped.pth", compress)
    ours, plain = fbi_ref.load_model(path), fbi_ref.load_model(tmp_path / "vgg.safetensors")
    for a, b in zip(ours.layers, plain.layers):
        for name in a.weights:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("side", [1, 5])
def test_a_kernel_other_than_3_by_3_is_not_a_torchvision_vgg(tmp_path, side):
    """torchvision's VGG pads by 1, which is 'same' only for 3 x 3 kernels: a 5 x 5 or 1 x 1 kernel read with
    'same' padding gave logits 4e-3 and 8e-3 off; such a file is refused."""
    state = small().state_dict_numpy()
    out, ins = state["features.0.weight"].shape[:2]
    state["features.0.weight"] = np.zeros((out, ins, side, side), np.float32)
    one_line_error(save(tmp_path, state), ArchitectureError, r"features\.0\.weight .* every conv 3 x 3")


def test_a_module_index_with_a_leading_zero_is_refused(tmp_path):
    """'features.00.weight' beside 'features.0.weight': one silently won; torch's load_state_dict refuses it."""
    state = small().state_dict_numpy()
    state["features.00.weight"] = state["features.0.weight"] * 2
    one_line_error(save(tmp_path, state), ArchitectureError, "unexpected key 'features.00.weight'")


def test_pth_without_torch_says_how_to_read_it(tmp_path, monkeypatch):
    torch.save(small().state_dict(), tmp_path / "vgg.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` meets where torch is not installed
    with pytest.raises(ModelFileError, match=r"vgg\.pth: reading \.pth needs PyTorch .*safetensors") as info:
        fbi_ref.load_model(tmp_path / "vgg.pth")
    assert "\n" not in str(info.value)


def test_batch_norm_folding_is_eval_mode_batch_norm():
    conv, bn = torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.1, 3), bn.weight.uniform_(-2, 2)
        x = torch.randn(2, 3, 6, 6)
        expected = bn(conv(x))
        w, b = fold_batch_norm(conv.weight.numpy(), conv.bias.numpy(),
                               *[t.numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)], BN_EPS, axis=0)
        folded = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    np.testing.assert_allclose(folded.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_flatten_rows_reordered_from_chw_to_hwc():
    c, s = 3, 2
    weight = np.random.default_rng(1).standard_normal((5, c * s * s))
    a = np.random.default_rng(0).standard_normal((c, s, s))  # (C, H, W)
    np.testing.assert_allclose(chw_rows_to_hwc(weight, c, s) @ a.transpose(1, 2, 0).ravel(), weight @ a.ravel(),
                               rtol=1e-6)


def test_state_dict_round_trip():
    state = small("vgg13").state_dict_numpy()
    back = torchvision_state_dict(torchvision_vgg(state))
    assert set(back) == set(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def test_a_1000_class_vgg_from_a_path_gets_imagenet_names(tmp_path):
    safetensors_numpy.save_file(small(classes=1000).state_dict_numpy(), str(tmp_path / "v.safetensors"))
    model = fbi_ref.load_model(tmp_path / "v.safetensors")
    assert len(model.class_names) == 1000 and model.class_names[0] == "tench"


def test_preprocessing_can_be_overridden(tmp_path):
    safetensors_numpy.save_file(small().state_dict_numpy(), str(tmp_path / "v.safetensors"))
    caffe = fbi_ref.load_model(tmp_path / "v.safetensors", preprocessing="caffe")
    assert caffe.preprocessing is CAFFE and caffe.fbi_defaults == {}  # FBI's own defaults (the paper's), for caffe
    with pytest.raises(InputError, match="unknown preprocessing 'bgr'"):
        fbi_ref.load_model(tmp_path / "v.safetensors", preprocessing="bgr")
    assert preprocessing("torchvision") is TORCHVISION


# --- bad files --------------------------------------------------------------------------------------------

def save(tmp_path, state, name="bad.safetensors"):
    path = tmp_path / name
    safetensors_numpy.save_file(state, str(path))
    return path


def one_line_error(path, error=ModelFileError, match=""):
    with pytest.raises(error, match=match) as info:
        fbi_ref.load_model(path)
    assert "\n" not in str(info.value) and str(path.name) in str(info.value)
    return str(info.value)


def test_wrong_keys(tmp_path):
    state = small().state_dict_numpy()
    state["head.weight"] = np.zeros((2, 2), np.float32)
    one_line_error(save(tmp_path, state), ArchitectureError, "unexpected key 'head.weight'")


def test_wrong_shapes(tmp_path):
    state = small().state_dict_numpy()
    state["features.3.weight"] = state["features.3.weight"][:, :5]  # (16, 5, 3, 3): 8 channels come in
    one_line_error(save(tmp_path, state), ArchitectureError, r"features\.3\.weight has shape \(16, 5, 3, 3\)")
    state = small().state_dict_numpy()
    state["classifier.3.bias"] = np.zeros(7, np.float32)
    one_line_error(save(tmp_path, state, "b.safetensors"), ArchitectureError, r"classifier\.3")


def test_a_classifier_not_at_7_by_7_is_refused(tmp_path):
    state = small().state_dict_numpy()
    state["classifier.0.weight"] = np.zeros((64, 64 * 4 * 4), np.float32)
    one_line_error(save(tmp_path, state), ArchitectureError, "average-pools to 7 x 7")


def test_truncated_files(tmp_path):
    net = small()
    good = save(tmp_path, net.state_dict_numpy(), "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.safetensors", ModelFileError, "not a readable state dict")
    torch.save(net.state_dict(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    one_line_error(tmp_path / "cut.pth", ModelFileError, "not a readable state dict")


def test_a_pickle_that_is_not_only_tensors_is_refused(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1), "evil": print}, tmp_path / "evil.pth")
    one_line_error(tmp_path / "evil.pth", ModelFileError, "not a readable state dict")


def test_declared_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    import fbi_ref.io.torch_files as tf
    path = save(tmp_path, small().state_dict_numpy())
    monkeypatch.setattr(tf, "MAX_MODEL_BYTES", 1000)
    one_line_error(path, ModelFileError, "the tensors declare .* bytes, more than the 1,000 allowed")


@pytest.mark.slow
def test_full_vgg16_at_224_equals_torch(tmp_path):
    net = VGG(CFGS["vgg16"], seed=5)
    safetensors_numpy.save_file(net.state_dict_numpy(), str(tmp_path / "vgg16.safetensors"))
    model = fbi_ref.load_model(tmp_path / "vgg16.safetensors")
    assert model.name == "torchvision_vgg16" and model.class_names[0] == "tench"
    x = images(1, seed=6)
    fp = model.forward(x)
    with torch.no_grad():
        logits, acts = activations(net, x)
    for name, theirs in acts.items():
        theirs = theirs.numpy()
        assert_close(fp.outputs[name], theirs.transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs, name)
    assert_close(fp.logits, logits.numpy(), "logits")
    e = fbi_ref.explain(model.astype(np.float64), x.astype(np.float64), "gradient")  # float64: see above
    assert_close(e.attribution, input_gradient(net.double(), x.astype(np.float64), e.target), "gradient")


def test_torchvision_inputs_are_about_58_times_smaller_than_caffes_as_docs_pytorch_says():
    from pathlib import Path
    from fbi_ref.nn.preprocessing import CAFFE
    span = lambda rule: float(np.mean(np.subtract(*rule.bounds()[::-1])))  # mean per-channel range of 0..255
    assert round(span(CAFFE) / span(TORCHVISION)) == 58
    assert "about 58 times smaller" in (Path(__file__).resolve().parents[1] / "docs" / "pytorch.md").read_text()
