"""Image loading and the model's preprocessing (caffe for Keras's VGG, matching Keras bit for bit; torchvision's
for torchvision's weights, matching ToTensor + Normalize bit for bit; see fbi_ref.nn.preprocessing).

load_image_rgb replicates keras.utils.load_img(path, target_size=(H, W), interpolation=...)
followed by keras.utils.img_to_array: convert to RGB first, then squash to (H, W) with the
named Pillow filter (no crop, no EXIF rotation), then float32. The one deliberate
difference: 16-bit greyscale images are scaled onto 0..255, where Keras (through Pillow's
convert) clips every value above 255 to white.
"""
from __future__ import annotations

import os
import struct
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image

from fbi_ref.errors import ImageError, InputError
from fbi_ref.io.paths import input_file, shown
from fbi_ref.nn.preprocessing import CAFFE, preprocessing as preprocessing_rule

# The filters keras.utils.load_img accepts, by the same names.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}

# Greyscale modes holding 16-bit samples ('I' is what Pillow gives 16-bit PGM/PPM files).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image_rgb(path: str | os.PathLike, size: tuple[int, int] | None = None,
               interpolation: str = "nearest") -> np.ndarray:
    """Read an image file as a (H, W, 3) float32 RGB array with values in 0..255.

    Exactly keras.utils.load_img(path, target_size=size, interpolation=interpolation)
    followed by img_to_array: the image is converted to RGB (alpha is dropped, not
    composited; palette, greyscale and CMYK images are expanded by Pillow) and then
    resized to size=(H, W) by squashing, without cropping. size=None keeps the file's
    own size. interpolation is one of INTERPOLATIONS ('nearest' is Keras's default).

    16-bit greyscale images (modes I;16* and I) are mapped onto 0..255 with
    round(v / 257), so 65535 becomes 255; Keras would clip them to 255 instead.

    Raises ImageError for a missing, unreadable, corrupt or truncated file, and for an
    image larger than Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS).
    """
    size = _check_size(size)
    resample = _resample_filter(interpolation)
    path = input_file(path, "image file", ImageError)  # a FIFO or /dev/zero would block or never end
    with _image_errors(path):
        with Image.open(path) as img:
            img.load()  # decode now: Pillow is lazy and would hide a truncated file
            rgb = _to_rgb(img)
            if size is not None:
                rgb = _resize(rgb, size, resample)
            return np.asarray(rgb, dtype=np.float32)  # (H, W, 3)


def preprocess_caffe(rgb: np.ndarray) -> np.ndarray:
    """Turn RGB 0..255 images (..., H, W, 3) into VGG inputs (..., H, W, 3) float32.

    Exactly keras.applications.vgg16.preprocess_input (mode 'caffe'): swap RGB to BGR,
    then subtract the ImageNet mean (fbi_ref.nn.preprocessing.CAFFE_MEAN_BGR); no scaling. Raises InputError
    for a non-numeric array, a last axis other than 3, or NaN/inf values.
    """
    return preprocess(rgb, CAFFE)  # (..., H, W, 3) float32


def deprocess_caffe(x: np.ndarray, clip: bool = False) -> np.ndarray:
    """Undo preprocess_caffe: VGG inputs (..., H, W, 3) back to RGB (..., H, W, 3) float32.

    Adds the ImageNet mean back and swaps BGR to RGB. The result is in 0..255 for any
    preprocessed image; pass clip=True to clip arrays that left that range (for example
    an input optimised by gradient ascent) before showing them. Raises InputError as
    preprocess_caffe does.
    """
    return deprocess(x, CAFFE, clip)


def preprocess(rgb: np.ndarray, preprocessing=CAFFE) -> np.ndarray:
    """RGB 0..255 images (..., H, W, 3) -> the network's input (..., H, W, 3) float32 by a preprocessing rule
    (a Preprocessing or its name: 'caffe', 'torchvision', 'scale255', 'identity'). InputError as preprocess_caffe."""
    x = preprocessing_rule(preprocessing).forward(_checked_image_array(rgb, "rgb"))  # (..., H, W, 3)
    return np.ascontiguousarray(x)  # the channel reorder leaves odd strides; the kernels want C order


def deprocess(x: np.ndarray, preprocessing=CAFFE, clip: bool = False) -> np.ndarray:
    """Undo `preprocess`: the network's inputs (..., H, W, 3) back to RGB 0..255 (..., H, W, 3) float32;
    clip=True clips to 0..255 (for arrays that left the range, e.g. an optimised input) before showing them."""
    rgb = np.ascontiguousarray(preprocessing_rule(preprocessing).inverse(_checked_image_array(x, "x")))  # (..., H, W, 3)
    return np.clip(rgb, 0.0, 255.0) if clip else rgb


def preprocess_image(path: str | os.PathLike, input_shape: tuple = (224, 224, 3),
                     interpolation: str = "nearest", preprocessing=CAFFE) -> np.ndarray:
    """Load an image file as a VGG input batch of one, shape (1, H, W, 3) float32.

    load_image_rgb(path, size=(H, W), interpolation) followed by the preprocessing (caffe by default), where
    input_shape=(H, W, 3) is the model's input shape; (None, None, 3) keeps the file's size.
    Raises ImageError for a bad file and InputError for a bad input_shape.
    """
    size = _size_from_input_shape(input_shape)
    rgb = load_image_rgb(path, size=size, interpolation=interpolation)  # (H, W, 3)
    return preprocess(rgb, preprocessing)[np.newaxis]  # (1, H, W, 3)


def load_image(path: str | os.PathLike, model, interpolation: str = "nearest") -> np.ndarray:
    """An image file as the model's input batch of one (1, H, W, 3), preprocessed by the model's own rule.

    The image is converted to RGB, squashed to the model's input size (no crop; 'nearest' by default, as
    Keras's load_img), then preprocessed as `model.preprocessing` says: caffe (RGB -> BGR, ImageNet mean
    subtracted) for Keras's VGG, torchvision's (/ 255, ImageNet mean and std) for torchvision's weights.
    Raises ImageError for a bad file.
    """
    if not hasattr(model, "input_shape"):
        raise InputError(f"model must be an fbi_ref.Model (see fbi_ref.load_model), not {type(model).__name__}")
    return preprocess_image(path, model.input_shape, interpolation, model.preprocessing)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB as Keras does (16-bit grey scaled, not clipped)."""
    if img.mode in SIXTEEN_BIT_MODES:
        img = _sixteen_bit_to_l(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Map 16-bit grey samples onto 8 bits with round(v / 257), the exact inverse of v * 257."""
    grey = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)  # (H, W)
    grey8 = ((grey + 128) // 257).astype(np.uint8)  # (H, W); integer rounding, no ties
    return Image.fromarray(grey8)  # mode 'L'


def _resize(img: Image.Image, size: tuple[int, int], resample) -> Image.Image:
    """Squash to size=(H, W); Pillow wants (W, H)."""
    height, width = size
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample)


@contextmanager
def _image_errors(path):
    """Turn Pillow's many failure modes, and its decompression-bomb warning, into ImageError."""
    with warnings.catch_warnings():  # restores the caller's warning filters on exit
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Dropping palette transparency is exactly what load_img does; no need to warn.
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        try:
            yield
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageError(f"{shown(path)}: too large to decode safely: {e}") from None
        except FileNotFoundError:
            raise ImageError(f"{shown(path)}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{shown(path)}: is a directory, not an image file") from None
        except PermissionError:
            raise ImageError(f"{shown(path)}: permission denied") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{shown(path)}: not an image file Pillow can read") from None
        # Corrupt data surfaces as OSError (e.g. 'image file is truncated') or, from some
        # decoders, as one of the others.
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
            raise ImageError(f"{shown(path)}: corrupt or truncated image: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    """The first line of an exception's message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _check_size(size) -> tuple[int, int] | None:
    """None, or a (H, W) pair of positive ints."""
    if size is None:
        return None
    if not _is_pair_of_positive_ints(size):
        raise InputError(f"size must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _size_from_input_shape(input_shape) -> tuple[int, int] | None:
    """(H, W) from a model input shape (H, W, 3); None for (None, None, 3)."""
    message = f"input_shape must be (height, width, 3), got {input_shape!r}"
    try:
        height, width, channels = input_shape
    except (TypeError, ValueError):
        raise InputError(message) from None
    if channels != 3:
        raise InputError(message)
    if height is None and width is None:
        return None
    if not _is_pair_of_positive_ints((height, width)):
        raise InputError(message)
    return int(height), int(width)


def _is_pair_of_positive_ints(pair) -> bool:
    """True for a length-2 sequence of positive (non-bool) integers."""
    try:
        items = list(pair)
    except TypeError:
        return False
    return len(items) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in items)


def _resample_filter(interpolation: str):
    """The Pillow filter for a Keras interpolation name."""
    if interpolation not in INTERPOLATIONS:
        raise InputError(
            f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[interpolation]


def _checked_image_array(x, name: str) -> np.ndarray:
    """x as float32 (..., H, W, 3), or InputError for a wrong shape, dtype or value."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise InputError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim < 3 or x.shape[-1] != 3 or x.size == 0:
        raise InputError(f"{name} must have shape (..., H, W, 3) and not be empty, got {x.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 turn into inf, refused below
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name} contains NaN or infinite values")
    return x

