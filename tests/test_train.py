"""Training: the weight gradients from the walk equal finite differences, and Adam lowers the loss."""
import dataclasses

import numpy as np

from fbi_ref.train import Adam, loss_and_gradients

from .strategies import randn, tiny_model


def loss_of(model, x, labels):
    return loss_and_gradients(model, x, labels)[0]


def test_weight_gradients_equal_central_finite_differences():
    model, x, labels = tiny_model(30), randn(31, 3, 9, 9, 3), np.array([0, 2, 3])
    _, _, grads = loss_and_gradients(model, x, labels)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name not in grads:
            continue
        for attr, grad in zip(("kernel", "bias"), grads[layer.name]):
            param = getattr(layer, attr)
            assert grad.shape == param.shape
            for idx in [tuple(rng.integers(0, s) for s in param.shape) for _ in range(5)]:
                up, down = param.copy(), param.copy()  # weights are read-only: assign new arrays
                up[idx] += 1e-6
                down[idx] -= 1e-6
                setattr(layer, attr, up)
                up = loss_of(model, x, labels)
                setattr(layer, attr, down)
                down = loss_of(model, x, labels)
                setattr(layer, attr, param)
                h = 1e-6
                np.testing.assert_allclose(grad[idx], (up - down) / (2 * h), rtol=1e-5, atol=1e-9,
                                           err_msg=f"{layer.name}.{attr}{idx}")


def test_adam_steps_lower_the_loss_on_a_fixed_batch():
    model, x, labels = tiny_model(32), randn(33, 8, 9, 9, 3), np.arange(8) % 4
    model.layers = [dataclasses.replace(layer) for layer in model.layers]
    adam = Adam(lr=1e-2)
    first = loss_of(model, x, labels)
    for _ in range(30):
        adam.step(model, loss_and_gradients(model, x, labels)[2])
    assert loss_of(model, x, labels) < 0.5 * first
