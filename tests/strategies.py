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


def tiny_model(seed=0, dtype=np.float64, relu=True, zero_bias=False, input_shape=(9, 9, 3)):
    """A small random network exercising every layer kind: even-kernel strided 'same' conv, overlapping
    'same' max-pool, 'valid' conv, 2x2 pool, flatten, dense, softmax. He-initialised."""
    from fbi_ref.nn.model import Model
    from fbi_ref.nn.network import Architecture, Conv2D, Dense, Flatten, MaxPool2D

    rng = np.random.default_rng(seed)
    act = "relu" if relu else "linear"

    def w(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(dtype)

    def b(n):
        return np.zeros(n, dtype) if zero_bias else (0.1 * rng.standard_normal(n)).astype(dtype)

    c = input_shape[2]
    layers = [Conv2D("block1_conv1", w(4, 4, c, 4), b(4), (2, 2), "same", act),   # 9x9 -> 5x5
              Conv2D("block1_conv2", w(3, 3, 4, 5), b(5), (1, 1), "same", act),   # 5x5
              MaxPool2D("block1_pool", (3, 3), (2, 2), "same"),                    # 5x5 -> 3x3, overlapping
              Conv2D("block2_conv1", w(2, 2, 5, 6), b(6), (1, 1), "valid", act),  # 3x3 -> 2x2
              MaxPool2D("block2_pool", (2, 2), (2, 2), "valid"),                   # 2x2 -> 1x1
              Flatten("flatten"),
              Dense("fc1", w(6, 7), b(7), act),
              Dense("predictions", w(7, 4), b(4), "softmax")]
    return Model(Architecture(layers, input_shape, "tiny"))


def finetune_model(seed=0, head="gap", dtype=np.float64, zero_bias=False, input_shape=(9, 9, 3)):
    """A small random fine-tune: every layer a Keras fine-tune adds. Conv, batch norm after its ReLU (Affine),
    overlapping 'same' average pool, conv, max-pool, a global pool (head 'gap' average, 'gmp' max: a max-pool
    over the whole image and a flatten), dense ReLU, batch norm after it, softmax."""
    from fbi_ref.nn.model import Model
    from fbi_ref.nn.network import Affine, Architecture, AveragePool2D, Conv2D, Dense, Flatten, GlobalAveragePool2D, MaxPool2D

    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(dtype)

    def b(n):
        return np.zeros(n, dtype) if zero_bias else (0.1 * rng.standard_normal(n)).astype(dtype)

    pool = [GlobalAveragePool2D("global_average_pooling2d")] if head == "gap" else [  # as the readers build them
        MaxPool2D("global_max_pooling2d_window", (3, 3), (3, 3), "valid"), Flatten("global_max_pooling2d")]
    layers = [Conv2D("block1_conv1", w(3, 3, input_shape[2], 4), b(4), (1, 1), "same", "relu"),  # 9x9
              Affine("block1_bn", rng.uniform(0.5, 1.5, 4).astype(dtype), b(4)),                  # after the ReLU
              AveragePool2D("block1_pool", (3, 3), (2, 2), "same"),                             # 9x9 -> 5x5
              Conv2D("block2_conv1", w(3, 3, 4, 5), b(5), (1, 1), "same", "relu"),               # 5x5
              MaxPool2D("block2_pool", (2, 2), (2, 2), "same"),                                 # 5x5 -> 3x3
              *pool,                                                                            # -> (5,)
              Dense("fc1", w(5, 6), b(6), "relu"),
              Affine("fc1_bn", rng.uniform(0.5, 1.5, 6).astype(dtype), b(6)),
              Dense("predictions", w(6, 4), b(4), "softmax")]
    return Model(Architecture(layers, input_shape, f"finetune_{head}"))
