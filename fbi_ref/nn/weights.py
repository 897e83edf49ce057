"""A layer's weights: what the weighted layers share, placeholders for weights still to be loaded, the checks
that loaded ones fit, and a batch norm folded into them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fbi_ref.errors import ArchitectureError
from fbi_ref.nn.activations import activate


@dataclass
class WeightedLayer:
    """What Conv2D and Dense share: a kernel and a bias, z = W a + b (their `pre_activation`), then the
    activation; walked back by a method's linear rule (methods/traversal.py)."""
    name: str
    kernel: np.ndarray
    bias: np.ndarray

    kind: ClassVar[str] = "linear"
    weights: ClassVar[tuple] = ("kernel", "bias")

    def forward(self, a):
        """a -> (z = W a + b, activate(z), None)."""
        z = self.pre_activation(a)
        return z, activate(z, self.activation), None


def placeholder(shape) -> np.ndarray:
    """A read-only float32 array of the given shape that takes no memory, for weights still to load."""
    # A zero-strided view knows its shape, which is all a loader needs to check a file against it.
    return np.broadcast_to(np.float32(0), tuple(shape))


def is_placeholder(array) -> bool:
    """True for an array made by `placeholder` (or any other all-zero-stride view)."""
    return array.ndim > 0 and not any(array.strides)


def frozen(layer):
    """A copy of the layer with read-only weights: read-only arrays are kept, writeable ones copied (the
    caller's arrays and layer are left as they are); ArchitectureError for NaN or infinite values."""
    replaced = {}
    for name in layer.weights:
        weight = getattr(layer, name)
        if not isinstance(weight, np.ndarray):
            continue
        if not np.isfinite(weight).all():
            raise ArchitectureError(f"layer {layer.name!r}: its weights hold NaN or infinite values")
        if weight.flags.writeable:
            replaced[name] = read_only(weight.copy())
    return dataclasses.replace(layer, **replaced)


def read_only(array):
    """The array, made read-only in place (for arrays a reader has just made and hands on)."""
    array.setflags(write=False)
    return array


def check_kernel(layer):
    """ArchitectureError for a kernel with no weights."""
    if layer.kernel.size == 0:
        raise ArchitectureError(f"layer {layer.name!r}: kernel of shape {layer.kernel.shape} has no weights")


def check_fits(layer, expected_in, found_in, what):
    """ArchitectureError unless the kernel takes the `found_in` inputs (channels) it is given and the bias has
    one value per output."""
    if expected_in != found_in:
        raise ArchitectureError(f"layer {layer.name!r}: kernel {layer.kernel.shape} expects {expected_in} {what}, "
                                f"the input has {found_in}")
    out = layer.kernel.shape[-1]
    if layer.bias.shape != (out,):
        raise ArchitectureError(f"layer {layer.name!r}: bias has shape {layer.bias.shape}, expected ({out},)")


def fold_batch_norm(kernel, bias, gamma, beta, mean, var, eps, axis=-1, dtype=np.float32):
    """A linear layer followed by an eval-mode batch norm, as one linear layer: (kernel * s, (bias - mean) * s +
    beta) with s = gamma / sqrt(var + eps) per output unit, the kernel's `axis`; computed in float64, returned in
    `dtype`. ArchitectureError for a negative variance."""
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in (gamma, beta, mean, var))
    if (var < 0).any():
        raise ArchitectureError("a batch norm's running_var holds negative values")
    scale = gamma / np.sqrt(var + eps)  # (O,)
    shape = [1] * np.ndim(kernel)
    shape[axis] = -1
    folded = np.asarray(kernel, np.float64) * scale.reshape(shape)  # scales each output unit
    return folded.astype(dtype), ((np.asarray(bias, np.float64) - mean) * scale + beta).astype(dtype)
