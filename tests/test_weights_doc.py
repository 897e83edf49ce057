"""weights/README.md's statement of the embedded file's layouts, checked on the file itself: HWIO conv kernels,
(in, out) dense kernels whose first one takes Keras's (H, W, C) flatten order, float32."""
from importlib.resources import files
from pathlib import Path

import h5py
import numpy as np

import fbi_ref
from fbi_ref.io.images import preprocess_caffe
from fbi_ref.shapes import generate

README = Path(__file__).resolve().parent.parent / "weights" / "README.md"


def weights(name):
    """(kernel, bias) of a layer of the embedded shapes.h5, as stored."""
    with h5py.File(files("fbi_ref.io.embedded") / "shapes.h5", "r") as f:
        group = f[name]
        kernel, bias = (np.asarray(group[n]) for n in group.attrs["weight_names"])
    return kernel, bias


def test_the_stated_shapes_and_dtype_are_the_files():
    text = README.read_text()
    assert "`block1_conv1_W_1:0` is (3, 3, 3, 16)" in text and "`fc1_W_1:0` is (512, 256)" in text
    assert "(2, 2, 128) `block5_pool` output: row `(h * 2 + w) * 128 + c`" in text
    kernel, bias = weights("block1_conv1")
    assert kernel.shape == (3, 3, 3, 16) and bias.shape == (16,) and kernel.dtype == np.dtype("<f4")
    assert weights("fc1")[0].shape == (512, 256)


def test_conv_kernels_are_hwio_cross_correlation_and_fc1_rows_are_hwc():
    model = fbi_ref.load_model("shapes")
    x = preprocess_caffe(generate(2, seed=3).images)  # (2, 64, 64, 3)
    fp = model.forward(x)
    kernel, bias = weights("block1_conv1")
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    row, col = 20, 33  # one output cell, by the stated rule: sum over (kh, kw, c_in) of window * kernel, not flipped
    window = padded[:, row:row + 3, col:col + 3, :]  # (2, 3, 3, 3)
    z = np.einsum("nhwc,hwco->no", window, kernel) + bias
    np.testing.assert_allclose(np.maximum(z, 0), fp.outputs["block1_conv1"][:, row, col], rtol=1e-5, atol=1e-4)
    fc1, b1 = weights("fc1")
    pooled = fp.outputs["block5_pool"].astype(np.float64)  # (2, 2, 2, 128)
    hwc = pooled.reshape(2, -1)  # row (h * 2 + w) * 128 + c, as the README says
    np.testing.assert_allclose(np.maximum(hwc @ fc1 + b1, 0), fp.outputs["fc1"], rtol=1e-5, atol=1e-4)
    chw = pooled.transpose(0, 3, 1, 2).reshape(2, -1)
    assert not np.allclose(np.maximum(chw @ fc1 + b1, 0), fp.outputs["fc1"], rtol=1e-3, atol=1e-2)  # the control
