"""The per-channel affine layer z = a * scale + shift: an inference-mode batch norm that cannot be folded into
the layer before it (one after a ReLU or a pool), as a forward map and its adjoint.

Its kernel is the scale, one value per channel (the last axis), gamma / sqrt(var + eps); its bias is the shift,
beta - mean * scale. The adjoint multiplies by the scale and adds no bias.
"""
from __future__ import annotations

from dataclasses import dataclass

from fbi_ref.errors import ArchitectureError
from fbi_ref.nn.weights import WeightedLayer, check_kernel


@dataclass
class Affine(WeightedLayer):
    """a * kernel + bias per channel (last axis), kernel (C,) the scale, bias (C,) the shift, then the activation.
    Fields: name, kernel, bias, activation. Takes images (N, H, W, C) or flat inputs (N, C)."""
    activation: str = "linear"

    def output_shape(self, shape):
        """(..., C) -> the same shape."""
        check_kernel(self)
        channels = self.kernel.shape[0]
        if self.kernel.shape != (channels,) or self.bias.shape != (channels,) or shape[-1] != channels:
            raise ArchitectureError(f"layer {self.name!r}: scale {self.kernel.shape} and shift {self.bias.shape} "
                                    f"must both be one value per channel of the input {shape}")
        return tuple(shape)

    def pre_activation(self, a):
        """a (..., C) -> a * scale + shift (..., C)."""
        return a * self.kernel + self.bias

    def adjoint(self, g, a_in, saved=None):
        """g (..., C) -> g * scale (..., C)."""
        return g * self.kernel

    def apply(self, a, kernel, bias=None):
        """a * kernel (+ bias) with another scale of the same shape (LRP's positive and negative parts)."""
        return a * kernel if bias is None else a * kernel + bias

    def apply_adjoint(self, g, a_in, kernel):
        """The transpose of `apply` with that scale."""
        return g * kernel
