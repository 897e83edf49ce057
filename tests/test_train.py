"""Training: the gradients of the batch-normalised training network equal finite differences, folding the
batch normalisation away changes nothing, and Adam lowers the loss."""
import numpy as np
import pytest

from fbi_ref.shapes import batchnorm as trainnet
from fbi_ref.nn.model import Model
from fbi_ref.shapes.train import Adam, loss_and_gradients

from .strategies import randn, tiny_model


def setup(seed, n=4):
    arch = tiny_model(seed).architecture()
    params, stats = trainnet.init_params(arch)
    rng = np.random.default_rng(seed)
    for key in params:  # away from gamma = 1, beta = 0 so that every term of the gradient matters
        params[key] = params[key] + 0.3 * rng.standard_normal(params[key].shape)
    return arch, params, stats, randn(seed + 1, n, 9, 9, 3), np.arange(n) % 4


def test_gradients_equal_central_finite_differences():
    arch, params, _, x, labels = setup(30)
    _, _, grads, _ = loss_and_gradients(arch, params, x, labels)
    assert set(grads) == set(params)
    rng = np.random.default_rng(0)
    for key, grad in grads.items():
        for idx in [tuple(rng.integers(0, s) for s in grad.shape) for _ in range(4)]:
            old, h = params[key][idx], 1e-6
            params[key][idx] = old + h
            up = loss_and_gradients(arch, params, x, labels)[0]
            params[key][idx] = old - h
            down = loss_and_gradients(arch, params, x, labels)[0]
            params[key][idx] = old
            np.testing.assert_allclose(grad[idx], (up - down) / (2 * h), rtol=1e-5, atol=1e-8, err_msg=str(key))


def test_folding_batch_norm_into_the_convolutions_changes_nothing():
    arch, params, stats, x, _ = setup(31, n=6)
    logits, tape = trainnet.forward(arch, params, x)
    for layer, _, saved, _ in tape:  # moving statistics = this batch's statistics
        if layer.name in stats:
            stats[layer.name] = (saved[2], saved[3])
    folded = Model(trainnet.fold(arch, params, stats))
    np.testing.assert_allclose(folded.forward(x).logits, logits, rtol=1e-9, atol=1e-9)


def test_adam_steps_lower_the_loss_on_a_fixed_batch():
    arch, params, _, x, labels = setup(32, n=8)
    adam = Adam(lr=1e-2)
    first = loss_and_gradients(arch, params, x, labels)[0]
    for _ in range(30):
        adam.step(params, loss_and_gradients(arch, params, x, labels)[2])
    assert loss_and_gradients(arch, params, x, labels)[0] < 0.5 * first


def bn_case(seed, m, o=5):
    rng = np.random.default_rng(seed)
    z, g = rng.standard_normal((m, o)) * 3 + 1, rng.standard_normal((m, o))
    gamma, beta = rng.standard_normal(o), rng.standard_normal(o)
    return z, g, gamma, beta


@pytest.mark.parametrize("m", [37, 1000])  # 1000 rows: 64 blocks of 15-16 rows each
def test_batch_norm_kernels_plain_equal_jitted_equal_the_numpy_formulas(m):
    z, g, gamma, beta = bn_case(40, m)
    mean, var = z.mean(axis=0), z.var(axis=0)
    zhat = (z - mean) / np.sqrt(var + trainnet.EPS)
    out = np.maximum(gamma * zhat + beta, 0)
    gm = g * (out > 0)  # the textbook batch-norm backward, written out with numpy
    dz = gamma / np.sqrt(var + trainnet.EPS) * (gm - gm.mean(axis=0) - zhat * (gm * zhat).mean(axis=0))
    for fwd, bwd in ((trainnet._bn_relu_forward, trainnet._bn_relu_backward),
                     (trainnet.bn_relu_forward, trainnet.bn_relu_backward)):
        got_zhat, got_out, got_dz = np.empty_like(z), np.empty_like(z), np.empty_like(z)
        got_mean, got_var = fwd(z, gamma, beta, got_zhat, got_out)
        np.testing.assert_allclose(got_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(got_var, var, rtol=1e-12)
        np.testing.assert_allclose(got_zhat, zhat, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_out, out, rtol=1e-12, atol=1e-12)
        dgamma, dbeta = bwd(g, got_zhat, got_out, np.sqrt(got_var + trainnet.EPS), gamma, got_dz)
        np.testing.assert_allclose(dbeta, gm.sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(dgamma, (gm * zhat).sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got_dz, dz, rtol=1e-10, atol=1e-12)


def test_batch_norm_kernels_in_float32_agree_with_float64():
    z, g, gamma, beta = (a.astype(np.float32) for a in bn_case(41, 3000))
    results = []
    for dtype in (np.float32, np.float64):
        zz, gg, ga, be = (a.astype(dtype) for a in (z, g, gamma, beta))
        zhat, out, dz = np.empty_like(zz), np.empty_like(zz), np.empty_like(zz)
        _, var = trainnet.bn_relu_forward(zz, ga, be, zhat, out)
        trainnet.bn_relu_backward(gg, zhat, out, np.sqrt(var + trainnet.EPS).astype(dtype), ga, dz)
        results.append((out, dz))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)
