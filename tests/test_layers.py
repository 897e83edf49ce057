"""Each linear operator against its adjoint: <A x, y> == <x, A^T y>, and each fast op against its naive loop;
every registered layer type's own forward and adjoint too (a new type must add its example here)."""
import numpy as np
import pytest
from hypothesis import given, settings

from fbi_ref.errors import InputError
from fbi_ref.nn import activations as A
from fbi_ref.nn import conv as C
from fbi_ref.nn import dense as D
from fbi_ref.nn import naive
from fbi_ref.nn import pooling as P
from fbi_ref.nn.geometry import bilinear_matrix, geometry, output_size, resize_bilinear, same_padding
from fbi_ref.nn import averaging as V
from fbi_ref.nn.network import (LAYER_TYPES, Activation, Affine, AveragePool2D, Conv2D, Dense, Dropout, Flatten,
                                GlobalAveragePool2D, MaxPool2D)
from fbi_ref.nn.preprocessing import PREPROCESSINGS

from .strategies import conv_case, pool_case, randn, seeds

settings.register_profile("fbi", deadline=None, max_examples=60)
settings.load_profile("fbi")


def assert_adjoint(ax, y, x, aty):
    """<A x, y> == <x, A^T y> to rtol 1e-10 (float64)."""
    lhs, rhs = np.vdot(ax, y), np.vdot(x, aty)
    assert np.isclose(lhs, rhs, rtol=1e-10, atol=1e-10 * (np.abs(ax).sum() + 1)), (lhs, rhs)


# ------------------------------------------------------------------ convolution

@given(conv_case(), seeds)
def test_conv_adjoint_identity(case, seed):
    n, hw, c, o, k, strides, padding = case
    kernel = randn(seed, *k, c, o)
    x = randn(seed + 1, n, *hw, c)
    ax = C.conv2d_forward(x, kernel, None, strides, padding)  # (N, Ho, Wo, O)
    y = randn(seed + 2, *ax.shape)
    assert_adjoint(ax, y, x, C.conv2d_adjoint(y, kernel, hw, strides, padding))


@given(conv_case(), seeds)
def test_conv_kernel_adjoint_identity(case, seed):
    """Linear in the kernel too: <conv(x; K), y> == <K, kernel_adjoint(x, y)> (the weight gradient)."""
    n, hw, c, o, k, strides, padding = case
    kernel, x = randn(seed, *k, c, o), randn(seed + 1, n, *hw, c)
    ax = C.conv2d_forward(x, kernel, None, strides, padding)
    y = randn(seed + 2, *ax.shape)
    assert_adjoint(ax, y, kernel, C.conv2d_kernel_adjoint(x, y, kernel.shape, strides, padding))


def test_conv_chunks_of_images_give_the_same_result(monkeypatch):
    """Gathering several images' patches into one matmul must not change anything."""
    x, kernel = randn(0, 5, 8, 8, 3), randn(1, 3, 3, 3, 4)
    whole = C.conv2d_forward(x, kernel, None)
    g = randn(2, *whole.shape)
    back, kgrad = C.conv2d_adjoint(g, kernel, (8, 8)), C.conv2d_kernel_adjoint(x, g, kernel.shape)
    monkeypatch.setattr(C, "COLS_BUDGET_BYTES", 2 * 8 * 8 * 27 * 8)  # two images per chunk: 3 chunks
    assert len(C.image_chunks(5, 8, 8, 27, 8)) == 3
    np.testing.assert_allclose(C.conv2d_forward(x, kernel, None), whole, atol=1e-13)
    np.testing.assert_allclose(C.conv2d_adjoint(g, kernel, (8, 8)), back, atol=1e-13)
    np.testing.assert_allclose(C.conv2d_kernel_adjoint(x, g, kernel.shape), kgrad, atol=1e-12)


@given(conv_case(), seeds)
@settings(max_examples=25)
def test_conv_matches_naive_loops(case, seed):
    n, hw, c, o, k, strides, padding = case
    kernel, bias = randn(seed, *k, c, o), randn(seed + 3, o)
    x = randn(seed + 1, n, *hw, c)
    z = C.conv2d_forward(x, kernel, bias, strides, padding)
    np.testing.assert_allclose(z, naive.conv2d(x, kernel, bias, strides, padding), rtol=1e-12, atol=1e-12)
    g = randn(seed + 2, *z.shape)
    np.testing.assert_allclose(C.conv2d_adjoint(g, kernel, hw, strides, padding),
                               naive.conv2d_adjoint(g, kernel, hw, strides, padding), rtol=1e-12, atol=1e-12)


def conv_matrix(kernel, hw, strides, padding):
    """The conv as an explicit matrix (outputs x inputs), built column by column from basis images."""
    c = kernel.shape[2]
    size = hw[0] * hw[1] * c
    basis = np.eye(size).reshape(size, *hw, c)  # (size, H, W, C): every basis image as one batch
    return C.conv2d_forward(basis, kernel, None, strides, padding).reshape(size, -1).T


@pytest.mark.parametrize("k,strides,padding", [((3, 3), (1, 1), "same"), ((2, 2), (2, 2), "same"),
                                               ((3, 2), (2, 1), "valid"), ((4, 4), (3, 3), "same")])
def test_conv_adjoint_is_the_matrix_transpose(k, strides, padding):
    kernel = randn(0, *k, 2, 3)
    hw = (5, 4)
    a = conv_matrix(kernel, hw, strides, padding)  # (Ho*Wo*O, H*W*C)
    ho, wo = geometry(hw, k, strides, padding)[:2]
    basis = np.eye(ho * wo * 3).reshape(-1, ho, wo, 3)  # every output basis vector
    at = C.conv2d_adjoint(basis, kernel, hw, strides, padding).reshape(len(basis), -1).T
    np.testing.assert_allclose(at, a.T, atol=1e-14)


def test_conv_adjoint_is_convolution_with_flipped_swapped_kernel():
    """For stride 1 'same' 3x3, the adjoint is a 'same' conv with the kernel flipped in space, in/out swapped."""
    kernel = randn(1, 3, 3, 4, 5)
    g = randn(2, 2, 6, 7, 5)
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (3, 3, O, C)
    np.testing.assert_allclose(C.conv2d_adjoint(g, kernel, (6, 7)),
                               C.conv2d_forward(g, flipped, None), atol=1e-12)


def test_same_padding_follows_keras_rule():
    # Keras/TF: even total padding split evenly, odd total puts the extra cell after (bottom/right).
    assert output_size(7, 3, 1, "same") == (7, 1)
    assert output_size(6, 2, 2, "same") == (3, 0)
    assert output_size(7, 2, 2, "same") == (4, 0)  # total 1 -> 0 before, 1 after
    assert output_size(8, 4, 1, "same") == (8, 1)  # total 3 -> 1 before, 2 after
    assert output_size(5, 3, 2, "valid") == (2, 0)
    assert same_padding(7, 2, 2) == (4, 0, 1) and same_padding(8, 4, 1) == (8, 1, 2)  # (out, before, after)
    with pytest.raises(InputError, match="does not fit"):
        output_size(2, 3, 1, "valid")


def test_bilinear_upsampling_uses_half_pixel_centres():
    np.testing.assert_allclose(bilinear_matrix(4, 2), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(bilinear_matrix(5, 5), np.eye(5))
    maps = randn(0, 2, 3, 4)
    np.testing.assert_allclose(resize_bilinear(maps, (3, 4)), maps)
    r = resize_bilinear(np.array([[[0.0, 1.0], [2.0, 3.0]]]), (4, 4))[0]
    np.testing.assert_allclose(r[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(r[:, 0], [0, 0.5, 1.5, 2])
    for h, w, size in [(7, 5, (64, 48)), (4, 4, (3, 9)), (14, 14, (375, 500))]:  # up, down, and a VOC image's size
        small = randn(h * w, 2, h, w)
        expected = np.einsum("Hh,nhw,Ww->nHW", bilinear_matrix(size[0], h), small, bilinear_matrix(size[1], w))
        np.testing.assert_allclose(resize_bilinear(small, size), expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ max pooling

@given(pool_case(), seeds)
def test_maxpool_matches_naive_including_ties(case, seed):
    n, hw, c, pool, strides, padding = case
    x = np.round(randn(seed, n, *hw, c))  # small integers: many ties
    y, sw = P.maxpool_forward(x, pool, strides, padding)
    y_ref, sw_ref = naive.maxpool(x, pool, strides, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(sw, sw_ref)
    np.testing.assert_array_equal(P.pick_switches(x, sw), y)


def test_maxpool_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.zeros((1, 2, 2, 1))
    y, sw = P.maxpool_forward(x)
    assert sw[0, 0, 0, 0] == 0
    x[0, 1, 0, 0] = x[0, 1, 1, 0] = 5.0
    y, sw = P.maxpool_forward(x)
    assert sw[0, 0, 0, 0] == 1 * 2 + 0


@given(pool_case(), seeds)
def test_switch_unpooling_is_the_adjoint_of_picking(case, seed):
    n, hw, c, pool, strides, padding = case
    _, sw = P.maxpool_forward(randn(seed, n, *hw, c), pool, strides, padding)  # switches held fixed
    x = randn(seed + 1, n, *hw, c)
    ax = P.pick_switches(x, sw)
    y = randn(seed + 2, *ax.shape)
    aty = P.unpool_switch(y, sw, hw, pool, strides, padding)
    assert_adjoint(ax, y, x, aty)
    np.testing.assert_allclose(aty, naive.unpool_switch(y, sw, hw, pool, strides, padding), atol=1e-12)


@given(pool_case(), seeds)
def test_replication_is_the_adjoint_of_window_summation(case, seed):
    n, hw, c, pool, strides, padding = case
    x = randn(seed, n, *hw, c)
    ax = P.window_sum(x, pool, strides, padding)
    y = randn(seed + 1, *ax.shape)
    aty = P.unpool_replicate(y, hw, pool, strides, padding)
    assert_adjoint(ax, y, x, aty)
    np.testing.assert_allclose(aty, naive.unpool_replicate(y, hw, pool, strides, padding), atol=1e-12)


@given(pool_case(), seeds)
def test_averaged_replication_is_the_adjoint_of_count_weighted_window_summation(case, seed):
    """average=True is D^-1 S^T (S window sum, D the cover counts), so its adjoint is x -> S(D^-1 x)."""
    n, hw, c, pool, strides, padding = case
    counts = np.maximum(P.window_counts(hw, pool, strides, padding), 1)[None, :, :, None]  # (1, H, W, 1)
    x = randn(seed, n, *hw, c)
    ax = P.window_sum(x / counts, pool, strides, padding)
    y = randn(seed + 1, *ax.shape)
    aty = P.unpool_replicate(y, hw, pool, strides, padding, average=True)
    assert_adjoint(ax, y, x, aty)
    np.testing.assert_allclose(aty, naive.unpool_replicate(y, hw, pool, strides, padding, True), atol=1e-12)


# ------------------------------------------------------------------ average pooling

@given(pool_case(), seeds)
def test_average_pooling_matches_naive_and_its_adjoint_spreads_over_the_cells(case, seed):
    n, hw, c, pool, strides, padding = case
    x = randn(seed, n, *hw, c)
    ax = V.average_forward(x, pool, strides, padding)
    np.testing.assert_allclose(ax, naive.average_pool(x, pool, strides, padding), rtol=1e-12, atol=1e-12)
    y = randn(seed + 1, *ax.shape)
    aty = V.average_adjoint(y, hw, pool, strides, padding)
    assert_adjoint(ax, y, x, aty)
    np.testing.assert_allclose(aty, naive.average_pool_adjoint(y, hw, pool, strides, padding), atol=1e-12)


def test_same_average_pooling_leaves_the_padding_out_of_the_mean():
    x = np.ones((1, 3, 3, 1))  # a constant stays that constant in every window, the border ones too
    np.testing.assert_array_equal(V.average_forward(x, (2, 2), (2, 2), "same"), np.ones((1, 2, 2, 1)))


def test_global_average_pooling_is_one_window_as_large_as_the_image():
    x = randn(5, 2, 3, 4, 3)
    layer = V.GlobalAveragePool2D("g")
    np.testing.assert_allclose(layer.forward(x)[0], naive.average_pool(x, (3, 4), (3, 4), "valid")[:, 0, 0])


def test_averaged_replication_equals_replication_for_2x2_stride_2():
    g = randn(3, 2, 4, 5, 3)
    np.testing.assert_array_equal(P.unpool_replicate(g, (8, 10), average=True), P.unpool_replicate(g, (8, 10)))


def test_averaged_replication_of_a_constant_is_that_constant_where_covered():
    g = np.full((1, 3, 3, 1), 2.5)
    out = P.unpool_replicate(g, (7, 7), (3, 3), (2, 2), "valid", average=True)
    np.testing.assert_allclose(out[0, :, :, 0], 2.5)


# ------------------------------------------------------------------ dense, flatten, preprocessing

@given(seeds)
def test_dense_adjoint_identity(seed):
    rng = np.random.default_rng(seed)
    n, i, o = rng.integers(1, 6, size=3)
    kernel, x, y = randn(seed, i, o), randn(seed + 1, n, i), randn(seed + 2, n, o)
    assert_adjoint(D.dense_forward(x, kernel, None), y, x, D.dense_adjoint(y, kernel))


@given(seeds)
def test_flatten_adjoint_identity_and_keras_order(seed):
    x = randn(seed, 2, 3, 4, 5)
    y = randn(seed + 1, 2, 60)
    assert_adjoint(D.flatten_forward(x), y, x, D.flatten_adjoint(y, (3, 4, 5)))
    assert D.flatten_forward(x)[1, (1 * 4 + 2) * 5 + 3] == x[1, 1, 2, 3]  # (H, W, C) order


@pytest.mark.parametrize("name", PREPROCESSINGS)
@given(seed=seeds)
def test_preprocessing_linear_part_adjoint_identity(name, seed):
    rule = PREPROCESSINGS[name]
    x, y = randn(seed, 2, 3, 4, 3), randn(seed + 1, 2, 3, 4, 3)
    linear = rule.forward(x) - rule.forward(np.zeros_like(x))
    assert_adjoint(linear, y, x, rule.adjoint(y))


# ------------------------------------------------------------------ every layer type, through its own methods

def example(layer_type, seed):
    """(layer, input x, what the adjoint needs from a forward pass, the linear map x -> A x) of a registered
    type, float64; a new layer type needs its case here."""
    rng = np.random.default_rng(seed)
    if layer_type is Conv2D:
        layer = Conv2D("c", randn(seed, 3, 2, 3, 4), randn(seed + 1, 4), (2, 1), "same", "relu")
        return layer, randn(seed + 2, 2, 5, 6, 3), None, lambda x: layer.pre_activation(x) - layer.bias
    if layer_type is Dense:
        layer = Dense("d", randn(seed, 7, 3), randn(seed + 1, 3), "relu")
        return layer, randn(seed + 2, 2, 7), None, lambda x: layer.pre_activation(x) - layer.bias
    if layer_type is MaxPool2D:
        layer = MaxPool2D("p", (3, 2), (2, 2), "same")
        switches = layer.forward(randn(seed + 3, 2, 5, 6, 3))[2]  # held fixed: picking them is linear
        return layer, randn(seed + 2, 2, 5, 6, 3), switches, lambda x: P.pick_switches(x, switches)
    if layer_type is Flatten:
        layer = Flatten("f")
        return layer, randn(seed + 2, 2, 3, 4, 5), None, lambda x: layer.forward(x)[0]
    if layer_type is Activation:
        layer = Activation("a", str(rng.choice(["relu", "linear", "softmax"])))
        return layer, randn(seed + 2, 2, 6), None, lambda x: layer.forward(x)[0]  # z: the input itself
    if layer_type is Dropout:
        layer = Dropout("x")
        return layer, randn(seed + 2, 2, 6), None, lambda x: layer.forward(x)[0]
    if layer_type is AveragePool2D:
        layer = AveragePool2D("v", (3, 2), (2, 2), "same")
        return layer, randn(seed + 2, 2, 5, 6, 3), None, lambda x: layer.forward(x)[0]
    if layer_type is GlobalAveragePool2D:
        layer = GlobalAveragePool2D("gv")
        return layer, randn(seed + 2, 2, 5, 6, 3), None, lambda x: layer.forward(x)[0]
    if layer_type is Affine:
        layer = Affine("s", randn(seed, 3), randn(seed + 1, 3), str(rng.choice(["relu", "linear"])))
        shape = (2, 4, 5, 3) if rng.random() < 0.5 else (2, 3)  # after a conv or a dense layer
        return layer, randn(seed + 2, *shape), None, lambda x: layer.pre_activation(x) - layer.bias
    raise AssertionError(f"no example of the layer type {layer_type.__name__}: add one to tests/test_layers.py")


@pytest.mark.parametrize("layer_type", LAYER_TYPES.values(), ids=list(LAYER_TYPES))
@given(seed=seeds)
def test_every_layer_types_adjoint_is_the_transpose_of_its_linear_map(layer_type, seed):
    layer, x, saved, linear = example(layer_type, seed)
    ax = linear(x)
    assert layer.output_shape(x.shape[1:]) == ax.shape[1:]
    y = randn(seed + 9, *ax.shape)
    assert_adjoint(ax, y, x, layer.adjoint(y, x, saved))


@pytest.mark.parametrize("layer_type", LAYER_TYPES.values(), ids=list(LAYER_TYPES))
def test_every_layer_types_forward_gives_its_output_shape_and_activation(layer_type):
    layer, x, _, _ = example(layer_type, 0)
    z, out, saved = layer.forward(x)
    assert out.shape[1:] == layer.output_shape(x.shape[1:]) and z.shape == out.shape
    activation = getattr(layer, "activation", "linear")
    np.testing.assert_array_equal(out, A.activate(z, activation))
    assert (saved is not None) == (layer.kind == "pool")


# ------------------------------------------------------------------ ReLU and softmax: Jacobians at the forward point

def relu_jacobian(z):
    """The ReLU's Jacobian at z (F,), built explicitly: diag[z > 0]."""
    return np.diag((z > 0).astype(float))


def softmax_jacobian(z):
    """The softmax's Jacobian at z (K,), built explicitly entry by entry: dp_i/dz_j = p_i ([i == j] - p_j)."""
    p = A.softmax(z[None])[0]
    return np.array([[p[i] * ((i == j) - p[j]) for j in range(len(z))] for i in range(len(z))])


def central_difference(f, z, v, h=1e-6):
    """(f(z + h v) - f(z - h v)) / 2h: the directional derivative J v, without the Jacobian."""
    return (f(z + h * v) - f(z - h * v)) / (2 * h)


@given(seeds)
def test_relu_adjoint_is_the_transposed_jacobian_at_the_forward_point(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    z, x, y = randn(seed, n), randn(seed + 1, n), randn(seed + 2, n)
    z[np.abs(z) < 1e-3] = 0.5  # keep the finite difference away from the kink
    j = relu_jacobian(z)
    aty = A.relu_adjoint(y[None], A.relu(z)[None])[0]
    assert_adjoint(j @ x, y, x, aty)
    np.testing.assert_allclose(aty, j.T @ y, atol=1e-15)
    np.testing.assert_allclose(j @ x, central_difference(A.relu, z, x), atol=1e-8)


@given(seeds)
def test_softmax_adjoint_is_the_transposed_jacobian_at_the_forward_point(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    z, x, y = 3 * randn(seed, k), randn(seed + 1, k), randn(seed + 2, k)
    j = softmax_jacobian(z)
    p = A.softmax(z[None])
    aty = A.softmax_adjoint(y[None], p)[0]
    assert_adjoint(j @ x, y, x, aty)
    np.testing.assert_allclose(aty, j.T @ y, atol=1e-14)
    np.testing.assert_allclose(j, j.T, atol=1e-15)  # symmetric: J^T = J
    np.testing.assert_allclose(j @ x, central_difference(lambda v: A.softmax(v[None])[0], z, x), atol=1e-8)


def test_softmax_adjoint_of_a_one_hot_is_the_gradient_of_that_probability():
    z = randn(3, 2, 5)
    p = A.softmax(z)
    e = np.zeros_like(z)
    e[[0, 1], [2, 4]] = 1
    expected = p[[0, 1], [2, 4]][:, None] * (e - p)  # p_c (e_c - p), the textbook formula
    np.testing.assert_allclose(A.softmax_adjoint(e, p), expected, atol=1e-16)


def test_softmax_is_stable_and_normalised():
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    p = A.softmax(z)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_the_dtype(dtype):
    x = randn(0, 1, 6, 6, 2, dtype=dtype)
    kernel = randn(1, 3, 3, 2, 3, dtype=dtype)
    z = C.conv2d_forward(x, kernel, np.zeros(3, dtype))
    assert z.dtype == dtype and C.conv2d_adjoint(z, kernel, (6, 6)).dtype == dtype
    y, sw = P.maxpool_forward(x)
    assert y.dtype == dtype and P.unpool_replicate(y, (6, 6)).dtype == dtype
