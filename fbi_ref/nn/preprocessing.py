"""A model's input preprocessing: RGB images in 0..255 to the network's input, its inverse, and its bounds.

Every preprocessing fbi_ref knows is one affine map per channel, x = (rgb[..., order] / divisor - mean) / std,
computed in that order in float32 so that each named rule gives its framework's numbers bit for bit:

    caffe        Keras's VGG (keras.applications.vgg16.preprocess_input): RGB -> BGR, minus the ImageNet mean
                 [103.939, 116.779, 123.68] (BGR), no scaling
    torchvision  torchvision's ImageNet models (ToTensor + Normalize): RGB, / 255, minus [0.485, 0.456, 0.406],
                 / [0.229, 0.224, 0.225]
    scale255     RGB, / 255
    identity     RGB 0..255 as it is

and any other per-channel affine map a model file states itself (a Keras Rescaling or Normalization layer in
front of the network: `from_scale_and_offset`), written down by `spec()` and read back by `preprocessing`.

A Model carries one (`model.preprocessing`); images, figures, reference files and LRP-z+'s input bounds read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fbi_ref.errors import InputError

# keras.applications' ImageNet mean in caffe's BGR order (float32, as Keras subtracts it).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_RGB = (0, 1, 2)
_BGR = (2, 1, 0)


@dataclass(frozen=True)
class Preprocessing:
    """x = (rgb[..., order] / divisor - mean) / std per channel; `order` picks the network's channels from RGB."""
    name: str
    order: tuple
    divisor: float
    mean: tuple  # in the network's channel order, after the division
    std: tuple
    description: str = field(compare=False)  # two maps with the same constants are the same map

    def __str__(self):
        return self.name

    def spec(self):
        """Its name if it is a named rule, else every constant: what `preprocessing` reads back."""
        if PREPROCESSINGS.get(self.name) == self:
            return self.name
        return {"order": list(self.order), "divisor": self.divisor, "mean": list(self.mean), "std": list(self.std)}

    def _constants(self, dtype):
        """(divisor, mean (3,), std (3,)) in `dtype`: the constants the framework itself computes with."""
        return (np.asarray(self.divisor, dtype), np.asarray(self.mean, dtype=np.float32).astype(dtype),
                np.asarray(self.std, dtype=np.float32).astype(dtype))

    def forward(self, rgb):
        """rgb (..., H, W, 3) in 0..255 (float) -> the network's input (..., H, W, 3) in rgb's dtype."""
        divisor, mean, std = self._constants(rgb.dtype)
        # Dividing by 1 is exact, so caffe stays Keras's rgb[..., ::-1] - mean bit for bit.
        return (rgb[..., list(self.order)] / divisor - mean) / std  # (..., H, W, 3)

    def adjoint(self, g):
        """g (..., H, W, 3) w.r.t. the network's input -> w.r.t. the RGB image: the transpose of forward's linear
        part (the mean shift has none), i.e. g / (divisor * std) put in RGB order."""
        divisor, _, std = self._constants(g.dtype)
        return self.to_rgb_order(g / (divisor * std))  # (..., H, W, 3) RGB

    def inverse(self, x):
        """The network's input (..., H, W, 3) -> rgb (..., H, W, 3) in 0..255, undoing forward."""
        divisor, mean, std = self._constants(x.dtype)
        return self.to_rgb_order((x * std + mean) * divisor)  # (..., H, W, 3) RGB

    def to_rgb_order(self, a):
        """An array (..., 3) in the network's channel order put in RGB order (for showing attributions)."""
        return a[..., list(np.argsort(self.order))]

    def bounds(self, dtype=np.float32):
        """(black, white) (1, 1, 1, 3): the preprocessed images of 0 and 255, the input's range per channel."""
        black = self.forward(np.zeros((1, 1, 1, 3), dtype))  # (1, 1, 1, 3)
        white = self.forward(np.full((1, 1, 1, 3), 255, dtype))  # (1, 1, 1, 3)
        return np.minimum(black, white), np.maximum(black, white)


CAFFE = Preprocessing("caffe", _BGR, 1.0, tuple(float(m) for m in CAFFE_MEAN_BGR), (1.0, 1.0, 1.0),
                      "caffe: RGB -> BGR, minus the ImageNet mean [103.939, 116.779, 123.68] (BGR), no scaling")
TORCHVISION = Preprocessing("torchvision", _RGB, 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "torchvision: RGB, / 255, minus the ImageNet mean [0.485, 0.456, 0.406], "
                            "/ the ImageNet std [0.229, 0.224, 0.225] (float32, in that order)")
SCALE255 = Preprocessing("scale255", _RGB, 255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "scale255: RGB, / 255")
IDENTITY = Preprocessing("identity", _RGB, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "identity: RGB 0..255 as it is")
PREPROCESSINGS = {p.name: p for p in (CAFFE, TORCHVISION, SCALE255, IDENTITY)}


def from_scale_and_offset(scale, offset, source):
    """x = rgb * scale + offset per channel (RGB order) as a Preprocessing: mean = -offset / scale, std = 1 / scale.
    InputError for a zero or non-finite scale."""
    scale, offset = (np.broadcast_to(np.asarray(v, np.float64), (3,)) for v in (scale, offset))
    if not (np.isfinite(scale).all() and np.isfinite(offset).all() and (scale != 0).all()):
        raise InputError(f"{source}: scale {scale.tolist()} and offset {offset.tolist()} must be finite, scale non-zero")
    mean, std = tuple(float(v) for v in -offset / scale), tuple(float(v) for v in 1 / scale)
    return Preprocessing("affine", _RGB, 1.0, mean, std, f"affine ({source}): RGB * {_listed(scale)} + {_listed(offset)}")


def _listed(values):
    """'0.0078' for three equal values, else '[a, b, c]'."""
    return f"{values[0]:.6g}" if np.all(values == values[0]) else "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def preprocessing(rule) -> Preprocessing:
    """A Preprocessing from itself, its name ('caffe', 'torchvision', 'scale255', 'identity') or its spec()."""
    if isinstance(rule, Preprocessing):
        return rule
    if isinstance(rule, str) and rule in PREPROCESSINGS:
        return PREPROCESSINGS[rule]
    if isinstance(rule, dict) and set(rule) == {"order", "divisor", "mean", "std"}:
        try:
            order, divisor = tuple(int(i) for i in rule["order"]), float(rule["divisor"])
            mean, std = tuple(float(v) for v in rule["mean"]), tuple(float(v) for v in rule["std"])
        except (TypeError, ValueError):
            order = ()
        if sorted(order) == [0, 1, 2] and len(mean) == len(std) == 3 and divisor > 0 and all(std) and \
                np.isfinite([divisor, *mean, *std]).all():
            return Preprocessing("affine", order, divisor, mean, std, f"affine: {rule}")
    raise InputError(f"unknown preprocessing {rule!r} (known: {', '.join(PREPROCESSINGS)}, or a dict with order, "
                     f"divisor, mean and std)")
