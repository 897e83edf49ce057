"""Image loading and caffe preprocessing: Keras's own outputs, every Pillow mode, every error."""
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from fbi_ref.errors import ImageError, InputError
from fbi_ref.io.images import deprocess_caffe, load_image_rgb, preprocess, preprocess_caffe, preprocess_image
from fbi_ref.nn.preprocessing import CAFFE_MEAN_BGR

FIXTURES = [("50x37", (32, 32)), ("300x240", (224, 224))]
INTERPOLATIONS = ["nearest", "bilinear"]


@pytest.fixture(scope="module")
def reference(keras_fixtures):
    """Keras's load_img / img_to_array / preprocess_input outputs for the two fixture PNGs."""
    with np.load(keras_fixtures / "image_loading_reference.npz") as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def small_rgb(reference):
    """The 50x37 fixture's pixels, (37, 50, 3) uint8."""
    return reference["50x37/pixels_rgb_uint8"]


def keras_load_img(reference, tag, size, interpolation):
    """Keras's load_img + img_to_array output for fixture `tag` at `size`."""
    return reference[f"{tag}/load_img_{interpolation}_{size[0]}x{size[1]}"]


def mode_of(path):
    """The Pillow mode a file opens in."""
    with Image.open(path) as img:
        return img.mode


def save(tmp_path, img, name):
    """Save a Pillow image under tmp_path and return the path."""
    path = tmp_path / name
    img.save(path)
    return path


# --- Keras equality -------------------------------------------------------------------------

@pytest.mark.parametrize("tag, size", FIXTURES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_load_image_equals_keras_load_img(keras_fixtures, reference, tag, size, interpolation):
    got = load_image_rgb(keras_fixtures / f"image_fixture_{tag}.png", size, interpolation)
    assert got.dtype == np.float32 and got.shape == size + (3,)
    np.testing.assert_array_equal(got, keras_load_img(reference, tag, size, interpolation))


@pytest.mark.parametrize("tag, size", FIXTURES)
def test_no_size_keeps_the_file_pixels(keras_fixtures, reference, tag, size):
    got = load_image_rgb(keras_fixtures / f"image_fixture_{tag}.png")
    np.testing.assert_array_equal(got, reference[f"{tag}/pixels_rgb_uint8"])


@pytest.mark.parametrize("tag, size", FIXTURES)
def test_preprocess_image_equals_keras_vgg16_input(keras_fixtures, reference, tag, size):
    got = preprocess_image(keras_fixtures / f"image_fixture_{tag}.png", size + (3,))
    assert got.dtype == np.float32 and got.shape == (1,) + size + (3,)
    np.testing.assert_array_equal(got, reference[f"{tag}/vgg16_input_nearest"])


@pytest.mark.parametrize("tag, size", FIXTURES)
def test_preprocess_caffe_equals_keras_preprocess_input(reference, tag, size):
    rgb = keras_load_img(reference, tag, size, "nearest")[np.newaxis]  # (1, H, W, 3)
    np.testing.assert_array_equal(preprocess_caffe(rgb), reference[f"{tag}/vgg16_input_nearest"])


# --- every Pillow mode ----------------------------------------------------------------------
# Each test builds a file whose RGB content is known exactly, so the expected array is either
# Keras's own reference or load_image of an equivalent plain RGB file. With 'bilinear' these also
# pin Keras's order of operations: convert to RGB first, then resize (resizing RGBA first would
# premultiply alpha; resizing 'P' first would fall back to nearest).

@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_rgba_drops_alpha_before_resizing(tmp_path, reference, small_rgb, interpolation):
    alpha = np.linspace(0, 255, small_rgb.shape[0] * small_rgb.shape[1]).astype(np.uint8)
    rgba = np.dstack([small_rgb, alpha.reshape(small_rgb.shape[:2])])  # (37, 50, 4)
    path = save(tmp_path, Image.fromarray(rgba), "rgba.png")
    got = load_image_rgb(path, (32, 32), interpolation)
    np.testing.assert_array_equal(got, keras_load_img(reference, "50x37", (32, 32), interpolation))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_cmyk_is_converted_by_pillow(tmp_path, reference, small_rgb, interpolation):
    # With K = 0, Pillow's CMYK -> RGB is exactly R = 255 - C.
    cmyk = np.dstack([255 - small_rgb, np.zeros(small_rgb.shape[:2], np.uint8)])  # (37, 50, 4)
    path = save(tmp_path, Image.frombytes("CMYK", (50, 37), cmyk.tobytes()), "cmyk.tiff")
    assert mode_of(path) == "CMYK"
    got = load_image_rgb(path, (32, 32), interpolation)
    np.testing.assert_array_equal(got, keras_load_img(reference, "50x37", (32, 32), interpolation))


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_palette_image_with_transparency(tmp_path, small_rgb, interpolation):
    coarse = small_rgb // 64 * 64  # (37, 50, 3), at most 64 colours
    colours, index = np.unique(coarse.reshape(-1, 3), axis=0, return_inverse=True)
    pal = Image.fromarray(index.reshape(coarse.shape[:2]).astype(np.uint8))
    pal.putpalette(colours.astype(np.uint8).tobytes())
    transparency = bytes(range(0, 256, 4))[: len(colours)]  # per-entry alpha: a tRNS chunk
    path = tmp_path / "palette.png"
    pal.save(path, transparency=transparency)
    assert mode_of(path) == "P"
    expected = load_image_rgb(save(tmp_path, Image.fromarray(coarse), "coarse.png"), (32, 32),
                          interpolation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping the transparency is intended: no warning
        got = load_image_rgb(path, (32, 32), interpolation)
    np.testing.assert_array_equal(got, expected)


def grey_cases(small_rgb):
    """(name, Pillow image) pairs holding the same grey picture in several modes."""
    grey = small_rgb[..., 1]  # (37, 50)
    alpha = np.full_like(grey, 77)
    return [
        ("L", Image.fromarray(grey)),
        ("LA", Image.fromarray(np.dstack([grey, alpha])).convert("LA")),
        ("I;16", Image.fromarray(grey.astype(np.uint16) * 257)),  # 16-bit, same picture
    ]


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("mode", ["L", "LA", "I;16"])
def test_grey_modes_become_equal_rgb_channels(tmp_path, small_rgb, mode, interpolation):
    grey = small_rgb[..., 1]
    expected = load_image_rgb(save(tmp_path, Image.fromarray(np.dstack([grey] * 3)), "rgb.png"),
                          (32, 32), interpolation)
    img = dict(grey_cases(small_rgb))[mode]
    path = save(tmp_path, img, "grey.png")
    assert mode_of(path) == mode
    np.testing.assert_array_equal(load_image_rgb(path, (32, 32), interpolation), expected)


@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tiff", "I;16"), (".pgm", "I")])
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, suffix, mode):
    # Keras would give 0, 128, 255, 255, 255, 255: Pillow's convert clips at 255.
    values = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    path = save(tmp_path, Image.fromarray(values), "sixteen" + suffix)
    assert mode_of(path) == mode
    got = load_image_rgb(path)  # (1, 6, 3)
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 1, 1, 128, 255])
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_every_interpolation_name_gives_rgb_float32(keras_fixtures):
    for name in ["nearest", "bilinear", "bicubic", "hamming", "box", "lanczos"]:
        got = load_image_rgb(keras_fixtures / "image_fixture_50x37.png", (20, 64), name)
        assert got.shape == (20, 64, 3) and got.dtype == np.float32


# --- bad files ------------------------------------------------------------------------------

def assert_image_error(path, *words):
    """load_image_rgb(path) raises a one-line ImageError naming the file and containing `words`."""
    with pytest.raises(ImageError, match=re.escape(str(path))) as info:
        load_image_rgb(path, (8, 8))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_missing_file(tmp_path):
    assert_image_error(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path):
    assert_image_error(tmp_path, "directory")


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", bytes(range(256)) * 4])
def test_not_an_image(tmp_path, content):
    path = tmp_path / "text.png"
    path.write_bytes(content)
    assert_image_error(path, "not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF"])
def test_truncated_file(tmp_path, small_rgb, fmt):
    whole = save(tmp_path, Image.fromarray(small_rgb), "whole." + fmt.lower())
    path = tmp_path / ("cut." + fmt.lower())
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with Image.open(path):  # opening alone succeeds: Pillow decodes lazily
        pass
    assert_image_error(path, "truncated")


@pytest.mark.parametrize("pixels", [12 * 12, 20 * 20])
def test_decompression_bomb(tmp_path, monkeypatch, pixels):
    # A limit of 100 pixels: 144 only makes Pillow warn, 400 (over twice the limit) makes it raise.
    side = int(pixels ** 0.5)
    path = save(tmp_path, Image.new("RGB", (side, side)), "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    filters_before = list(warnings.filters)
    assert_image_error(path, "too large")
    assert warnings.filters == filters_before


def test_bomb_limit_none_means_no_limit(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("RGB", (20, 20)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image_rgb(path).shape == (20, 20, 3)


@pytest.mark.parametrize("size", [(0, 5), (5,), (5, 5, 5), (2.5, 4), (True, 4), "ab", 7])
def test_bad_size(keras_fixtures, size):
    with pytest.raises(InputError, match="size"):
        load_image_rgb(keras_fixtures / "image_fixture_50x37.png", size)


def test_bad_interpolation(keras_fixtures):
    with pytest.raises(InputError, match="interpolation"):
        load_image_rgb(keras_fixtures / "image_fixture_50x37.png", (8, 8), "cubic")


@pytest.mark.parametrize("shape", [(224, 224), (224, 224, 1), (224, None, 3), (0, 4, 3), None])
def test_bad_input_shape(keras_fixtures, shape):
    with pytest.raises(InputError, match="input_shape"):
        preprocess_image(keras_fixtures / "image_fixture_50x37.png", shape)


def test_input_shape_none_keeps_size(keras_fixtures):
    got = preprocess_image(keras_fixtures / "image_fixture_50x37.png", (None, None, 3))
    assert got.shape == (1, 37, 50, 3)


# --- preprocess / deprocess -----------------------------------------------------------------

def test_preprocess_swaps_to_bgr_then_subtracts_the_mean():
    red = np.array([[[255, 0, 0]]], np.uint8)  # (1, 1, 3)
    expected = np.float32([0, 0, 255]) - CAFFE_MEAN_BGR
    np.testing.assert_array_equal(preprocess_caffe(red)[0, 0], expected)


def test_deprocess_inverts_preprocess_exactly_on_every_pixel_value():
    levels = np.arange(256, dtype=np.float32)
    rgb = np.stack([levels, levels[::-1], np.roll(levels, 100)], axis=-1)[np.newaxis]  # (1, 256, 3)
    np.testing.assert_array_equal(deprocess_caffe(preprocess_caffe(rgb)), rgb)


@pytest.mark.parametrize("rule", ["caffe", "torchvision", "scale255", "identity"])
def test_preprocess_returns_c_order_whatever_the_input_strides(rule):
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 6, 8, 3)).astype(np.float32)  # (N, H, W, 3)
    for view in (rgb, rgb[:, ::2], rgb.transpose(0, 2, 1, 3), np.asfortranarray(rgb)):
        x = preprocess(view, rule)
        assert x.flags.c_contiguous
        np.testing.assert_array_equal(x, preprocess(np.ascontiguousarray(view), rule))


def test_batch_axes_and_integer_input():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5, 3)).astype(np.uint8)
    x = preprocess_caffe(rgb)
    assert x.shape == rgb.shape and x.dtype == np.float32
    np.testing.assert_array_equal(deprocess_caffe(x), rgb.astype(np.float32))


def test_deprocess_clip():
    x = np.full((2, 2, 3), 500.0, np.float32)
    assert deprocess_caffe(x).max() > 255
    assert deprocess_caffe(x, clip=True).max() == 255


BAD_ARRAYS = [  # (what is wrong, the array, what the message says)
    ("last axis", np.zeros((4, 4, 4)), "must have shape"),
    ("two axes", np.zeros((4, 3)), "must have shape"),
    ("empty", np.zeros((0, 4, 3)), "must have shape"),
    ("complex", np.zeros((2, 2, 3), np.complex64), "must hold real numbers"),
    ("bool", np.zeros((2, 2, 3), bool), "must hold real numbers"),
    ("strings", np.full((2, 2, 3), "a"), "must hold real numbers"),
    ("nan", np.full((2, 2, 3), np.nan), "NaN or infinite"),
    ("inf", np.full((2, 2, 3), -np.inf), "NaN or infinite"),
    ("overflows float32", np.full((2, 2, 3), 1e300), "NaN or infinite"),
]


@pytest.mark.parametrize("func", [preprocess_caffe, deprocess_caffe])
@pytest.mark.parametrize("name, array, says", BAD_ARRAYS, ids=[name for name, _, _ in BAD_ARRAYS])
def test_bad_arrays(func, name, array, says):
    with pytest.raises(InputError, match=says) as info:
        func(array)
    assert "\n" not in str(info.value)


def test_a_keras_rescaling_becomes_a_preprocessing_that_its_spec_rebuilds():
    from fbi_ref.nn.preprocessing import from_scale_and_offset, preprocessing
    rule = from_scale_and_offset(1 / 127.5, -1.0, "layer rescaling")
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 4, 5, 3)).astype(np.float32)
    expected = rgb.astype(np.float64) / 127.5 - 1  # (N, H, W, 3)
    np.testing.assert_allclose(preprocess(rgb, rule), expected, atol=4 * np.finfo(np.float32).eps)
    again = preprocessing(rule.spec())
    np.testing.assert_array_equal(preprocess(rgb, again), preprocess(rgb, rule))
    np.testing.assert_allclose(again.inverse(preprocess(rgb, again)), rgb, rtol=1e-5)
    assert preprocessing("caffe").spec() == "caffe"
    for bad in ({"order": [0, 0, 1], "divisor": 1, "mean": [0] * 3, "std": [1] * 3},
                {"order": [0, 1, 2], "divisor": 1, "mean": [0] * 3, "std": [0, 1, 1]}, {"order": [0, 1, 2]}):
        with pytest.raises(InputError, match="unknown preprocessing"):
            preprocessing(bad)
    with pytest.raises(InputError, match="scale non-zero"):
        from_scale_and_offset(0.0, 1.0, "layer rescaling")
