"""Winograd F(2x2, 3x3) computes the same convolution (and adjoint) as the im2col reference."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbi_ref.nn import conv, winograd as W
from fbi_ref.nn.memory import scratch
from fbi_ref.errors import InputError
from fbi_ref.nn.network import Conv2D

from .strategies import randn, seeds, tiny_model

shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5))


def layer_of(kernel, bias):
    return Conv2D("conv", kernel, bias)


@given(shapes, seeds)
@settings(deadline=None, max_examples=40)
def test_winograd_forward_and_adjoint_equal_im2col(shape, seed):
    n, h, w, c, o = shape
    x, kernel, bias = randn(seed, n, h, w, c), randn(seed + 1, 3, 3, c, o), randn(seed + 2, o)
    layer = layer_of(kernel, bias)
    with conv.use("winograd"):
        z = layer.pre_activation(x)
        g = randn(seed + 3, *z.shape)
        back = layer.adjoint(g, x)
    np.testing.assert_allclose(z, conv.conv2d_forward(x, kernel, bias), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back, conv.conv2d_adjoint(g, kernel, (h, w)), rtol=1e-12, atol=1e-12)
    # and so, the adjoint identity holds on the Winograd path too
    assert np.isclose(np.vdot(z - bias, g), np.vdot(x, back), rtol=1e-10)


@given(shapes, seeds)
@settings(deadline=None, max_examples=10)
def test_transform_kernels_plain_equal_jitted(shape, seed):
    n, h, w, c, o = shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = randn(seed, n, 2 * th + 2, 2 * tw + 2, c)
    v_plain, v_jit = np.empty((16, n * th * tw, c)), np.empty((16, n * th * tw, c))
    W._input_transform(xp, th, tw, 0, v_plain)
    W.input_transform(xp, th, tw, 0, v_jit)
    np.testing.assert_allclose(v_plain, v_jit, atol=1e-13)
    m, bias = randn(seed + 1, 16, n * th * tw, o), randn(seed + 2, o)
    y_plain, y_jit = np.empty((n, h, w, o)), np.empty((n, h, w, o))
    W._output_transform(m, th, tw, 0, bias, y_plain)
    W.output_transform(m, th, tw, 0, bias, y_jit)
    np.testing.assert_allclose(y_plain, y_jit, atol=1e-13)


@given(st.integers(1, 6), st.integers(1, 6), seeds)
@settings(deadline=None, max_examples=20)
def test_kernel_transform_is_G_g_Gt_and_the_adjoint_is_a_permuted_view_of_it(c, o, seed):
    kernel = randn(seed, 3, 3, c, o)
    expected = np.einsum("ik,klco,jl->ijco", W.G, kernel, W.G).reshape(16, c, o)  # the definition, written out
    for fn in (W._kernel_transform, W.kernel_transform):
        u = np.empty((16, c, o))
        fn(kernel, u)
        np.testing.assert_allclose(u, expected, rtol=1e-13, atol=1e-13)
    adjoint = W.transform_kernel(np.ascontiguousarray(W.adjoint_kernel(kernel)))  # (16, O, C), transformed anew
    np.testing.assert_allclose(np.stack(W.adjoint_transformed(W.transform_kernel(kernel))), adjoint, rtol=1e-13, atol=1e-13)


def test_winograd_matches_im2col_in_float32_to_rounding():
    x = randn(0, 2, 28, 28, 64, dtype=np.float32)
    kernel = (randn(1, 3, 3, 64, 32) * np.sqrt(2 / 576)).astype(np.float32)
    layer = layer_of(kernel, np.zeros(32, np.float32))
    with conv.use("winograd"):
        fast = layer.pre_activation(x)
    exact = conv.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None)
    assert np.abs(fast - exact).max() <= 1e-5 * np.abs(exact).max()


def test_model_is_the_same_with_either_algorithm():
    model, x = tiny_model(40, dtype=np.float32), randn(41, 2, 9, 9, 3, dtype=np.float32)
    auto = model.forward(x).logits
    with conv.use("im2col"):
        reference = model.forward(x).logits
    np.testing.assert_allclose(auto, reference, rtol=1e-5, atol=1e-5)


def test_cached_kernels_follow_the_kernel_array():
    model = tiny_model(42, dtype=np.float32)
    layer = model.layers[1]  # 3x3 stride-1 'same'
    assert W.applies(layer.kernel.shape, layer.strides, layer.padding)
    first = layer.winograd_kernel()
    assert layer.winograd_kernel() is first  # computed once
    with pytest.raises(ValueError, match="read-only"):
        layer.kernel[0, 0, 0, 0] = 1.0  # in-place edits would leave the cache stale: refused
    layer.kernel = layer.kernel * 2
    np.testing.assert_allclose(layer.winograd_kernel(), 2 * first, rtol=1e-6)


def test_winograd_refuses_convolutions_it_cannot_compute():
    layer = dataclasses.replace(tiny_model(0).layers[0])  # 4x4 stride 2
    with conv.use("winograd"), pytest.raises(InputError, match="3x3 stride-1"):
        layer.pre_activation(randn(0, 1, 9, 9, 3))
    with pytest.raises(InputError, match="algorithm"):
        with conv.use("fft"):
            pass


def test_chunks_of_tiles_give_the_same_result_as_one_chunk(monkeypatch):
    x, kernel, bias = randn(50, 2, 7, 9, 3), randn(51, 3, 3, 3, 4), randn(52, 4)
    u = W.transform_kernel(kernel)
    whole = W.conv3x3(x, u, bias, scratch)
    g = randn(53, 2, 7, 9, 4)
    back = W.conv3x3(g, W.adjoint_transformed(u), None, scratch)  # the adjoint, through the views
    monkeypatch.setattr(W, "TILES_BUDGET_BYTES", 16 * 4 * 8 * 7)  # 7 tiles per chunk: 40 tiles in 6 chunks
    np.testing.assert_array_equal(W.conv3x3(x, u, bias, scratch), whole)
    np.testing.assert_array_equal(W.conv3x3(g, W.adjoint_transformed(u), None, scratch), back)
    np.testing.assert_allclose(whole, conv.conv2d_forward(x, kernel, bias), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back, conv.conv2d_adjoint(g, kernel, (7, 9)), rtol=1e-12, atol=1e-12)
