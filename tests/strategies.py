"""Hypothesis strategies shared by the tests: layer geometries and reproducible random arrays."""
import numpy as np
from hypothesis import strategies as st

seeds = st.integers(0, 2**32 - 1)


def randn(seed, *shape, dtype=np.float64):
    """Standard-normal array of `shape` drawn from `seed`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@st.composite
def window_geometry(draw, max_k=5, max_stride=3, max_extra=6):
    """(input (H, W), k (kh, kw), strides, padding) that fit together, odd and even sizes alike."""
    padding = draw(st.sampled_from(["same", "valid"]))
    k = (draw(st.integers(1, max_k)), draw(st.integers(1, max_k)))
    strides = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    hw = tuple(draw(st.integers(k[i], k[i] + max_extra)) for i in range(2))
    return hw, k, strides, padding


@st.composite
def conv_case(draw):
    """A conv geometry with batch and channel counts: (n, hw, c_in, c_out, k, strides, padding)."""
    hw, k, strides, padding = draw(window_geometry())
    n = draw(st.integers(1, 3))
    c_in, c_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return n, hw, c_in, c_out, k, strides, padding


@st.composite
def pool_case(draw):
    """A pooling geometry with batch and channels: (n, hw, c, pool, strides, padding)."""
    hw, k, strides, padding = draw(window_geometry(max_k=4))
    return draw(st.integers(1, 3)), hw, draw(st.integers(1, 4)), k, strides, padding
