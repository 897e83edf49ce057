"""The MaxPool2D layer: max pooling, the switches it records, and the three backward maps over its windows.

Max-pool switches are flat indices ih * W + iw into the input plane; ties go to the first maximum in
row-major window order; 'same' padding cells never win. Picking the switch entries is linear in the input
and `unpool_switch` is its adjoint (the gradient's rule); `window_sum` is linear too and `unpool_replicate`
its adjoint (FBI's rule replicates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fbi_ref.nn import kernels
from fbi_ref.nn.geometry import geometry, pooled_shape


def maxpool_forward(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """x (N, H, W, C) -> (y (N, Ho, Wo, C), switches (N, Ho, Wo, C) int64 flat argmax ih * W + iw)."""
    n, h, w, c = x.shape
    ho, wo, pt, pl = geometry((h, w), pool_size, strides, padding)
    y = np.empty((n, ho, wo, c), dtype=x.dtype)  # (N, Ho, Wo, C)
    switches = np.empty((n, ho, wo, c), dtype=np.int64)  # (N, Ho, Wo, C)
    kernels.maxpool(np.ascontiguousarray(x), *pool_size, *strides, pt, pl, y, switches)
    return y, switches


def pick_switches(x, switches):
    """x (N, H, W, C), switches (N, Ho, Wo, C) -> x at the switch positions (N, Ho, Wo, C); linear in x."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)  # (N, H*W, C)
    ho, wo = switches.shape[1:3]
    idx = switches.reshape(n, ho * wo, c)  # (N, Ho*Wo, C)
    return np.take_along_axis(flat, idx, axis=1).reshape(n, ho, wo, c)


def unpool_switch(g, switches, input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """g (N, Ho, Wo, C) -> (N, H, W, C): each value goes back to its window's argmax (adjoint of pick_switches)."""
    ho, wo, pt, pl = geometry(input_hw, pool_size, strides, padding)
    out = np.empty((g.shape[0], *input_hw, g.shape[3]), dtype=g.dtype)  # (N, H, W, C)
    kernels.unpool_switch(np.ascontiguousarray(g), switches, *pool_size, *strides, pt, pl, out)
    return out


def window_sum(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """x (N, H, W, C) -> (N, Ho, Wo, C): the sum over each pooling window (padding counts as zero)."""
    n, h, w, c = x.shape
    ho, wo, pt, pl = geometry((h, w), pool_size, strides, padding)
    ph, pw = pool_size
    hp, wp = max(h + pt, (ho - 1) * strides[0] + ph), max(w + pl, (wo - 1) * strides[1] + pw)
    xp = np.zeros((n, hp, wp, c), dtype=x.dtype)  # (N, Hp, Wp, C)
    xp[:, pt:pt + h, pl:pl + w] = x
    out = np.zeros((n, ho, wo, c), dtype=x.dtype)  # (N, Ho, Wo, C)
    for ki in range(ph):
        for kj in range(pw):
            out += xp[:, ki:ki + (ho - 1) * strides[0] + 1:strides[0], kj:kj + (wo - 1) * strides[1] + 1:strides[1]]
    return out


def unpool_replicate(g, input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid", average=False):
    """g (N, Ho, Wo, C) -> (N, H, W, C): copy each value over its window, summing where windows overlap.

    average=True takes the mean over the covering windows instead (the FBI paper's rule for overlapping
    windows); for non-overlapping windows (2x2, stride 2) both are the same.
    """
    ho, wo, pt, pl = geometry(input_hw, pool_size, strides, padding)
    out = np.empty((g.shape[0], *input_hw, g.shape[3]), dtype=g.dtype)  # (N, H, W, C)
    kernels.unpool_replicate(np.ascontiguousarray(g), *pool_size, *strides, pt, pl, average, out)
    return out


def window_counts(input_hw, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """(H, W) float64: how many pooling windows cover each input cell."""
    ones = np.ones((1, *geometry(input_hw, pool_size, strides, padding)[:2], 1))  # (1, Ho, Wo, 1)
    return unpool_replicate(ones, input_hw, pool_size, strides, padding)[0, :, :, 0]


def window_gaps(a, pool_size, strides, padding):
    """For each max-pool window of a (N, H, W, C): (largest - second largest, largest), both (N, Ho, Wo, C);
    how near each window is to a tie, which another implementation's rounding may break otherwise."""
    ho, wo, pt, pl = geometry(a.shape[1:3], pool_size, strides, padding)
    ph, pw = pool_size
    padded = np.pad(a, ((0, 0), (pt, ph), (pl, pw), (0, 0)), constant_values=-np.inf)  # (N, Hp, Wp, C)
    cells = [padded[:, ki:ki + (ho - 1) * strides[0] + 1:strides[0], kj:kj + (wo - 1) * strides[1] + 1:strides[1]]
             for ki in range(ph) for kj in range(pw)]
    values = np.sort(np.stack(cells, axis=-1), axis=-1)  # (N, Ho, Wo, C, ph*pw)
    second = values[..., -2] if values.shape[-1] > 1 else np.full(values.shape[:-1], -np.inf)
    with np.errstate(invalid="ignore"):
        return values[..., -1] - second, values[..., -1]


@dataclass
class MaxPool2D:
    """Max pooling over (ph, pw) windows moved by strides; its adjoint sends each value back to its window's
    winner (the switch recorded by the forward pass)."""
    name: str
    pool_size: tuple = (2, 2)
    strides: tuple = (2, 2)
    padding: str = "valid"

    kind: ClassVar[str] = "pool"  # walked back by a method's pool rule (methods/traversal.py)
    weights: ClassVar[tuple] = ()

    def output_shape(self, shape):
        """(H, W, C) -> (Ho, Wo, C)."""
        return pooled_shape(self, shape)

    def forward(self, a):
        """a (N, H, W, C) -> (y, y, switches), y (N, Ho, Wo, C) the window maxima (no activation)."""
        y, switches = maxpool_forward(a, self.pool_size, self.strides, self.padding)
        return y, y, switches

    def adjoint(self, g, a_in, saved):
        """g (N, Ho, Wo, C) -> (N, H, W, C): each value to its window's switch (`saved`, from forward); linear
        in g for the switches of one forward pass."""
        return unpool_switch(g, saved, a_in.shape[1:3], self.pool_size, self.strides, self.padding)

    def replicate(self, g, a_in, average=True):
        """g (N, Ho, Wo, C) -> (N, H, W, C): each value copied over its window, averaged (or summed) where
        windows overlap."""
        return unpool_replicate(g, a_in.shape[1:3], self.pool_size, self.strides, self.padding, average=average)

