"""Gradient, DeconvNet and guided backprop against PyTorch autograd with ReLU hooks (as Captum does it).

Skipped when torch is not installed; `.ci/run` installs torch==2.13.0 so CI runs them.
"""
import numpy as np
import pytest

import fbi_ref
from fbi_ref.nn.network import Conv2D, Dense, Flatten, MaxPool2D

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def torch_model(model):
    """An equivalent torch network (NCHW inside), with every ReLU as its own module so hooks can reach it."""
    nn = torch.nn
    modules = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            assert layer.padding == "same" and layer.strides == (1, 1) and layer.kernel.shape[0] % 2 == 1
            conv = nn.Conv2d(layer.kernel.shape[2], layer.kernel.shape[3], layer.kernel.shape[:2],
                             padding=layer.kernel.shape[0] // 2)
            conv.weight.data = torch.from_numpy(layer.kernel.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
            conv.bias.data = torch.from_numpy(layer.bias.copy())
            modules += [conv, nn.ReLU()]
        elif isinstance(layer, MaxPool2D):
            modules.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif isinstance(layer, Flatten):
            modules.append(Flatten_HWC())
        elif isinstance(layer, Dense):
            dense = nn.Linear(*layer.kernel.shape)
            dense.weight.data = torch.from_numpy(layer.kernel.T.copy())
            dense.bias.data = torch.from_numpy(layer.bias.copy())
            modules += [dense] + ([nn.ReLU()] if layer.activation == "relu" else [])
    return nn.Sequential(*modules)


class Flatten_HWC(torch.nn.Module):
    """Flatten in Keras's (H, W, C) order."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def torch_attribution(net, x, target, method):
    """d logit_target / d x with the ReLU backward replaced as Captum's GuidedBackprop / Deconvolution do."""
    hooks = []
    for module in net.modules():
        if isinstance(module, torch.nn.ReLU) and method != "gradient":
            def hook(mod, grad_in, grad_out):
                source = grad_out if method == "deconvnet" else grad_in
                return (torch.relu(source[0]),)
            hooks.append(module.register_full_backward_hook(hook))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)  # NHWC -> NCHW
    logits = net(xt)
    logits[torch.arange(len(target)), torch.from_numpy(target)].sum().backward()
    for h in hooks:
        h.remove()
    return xt.grad.numpy().transpose(0, 2, 3, 1), logits.detach().numpy()  # back to NHWC


@pytest.mark.parametrize("method", ["gradient", "deconvnet", "guided_backprop"])
def test_backprop_methods_equal_torch_autograd_on_the_keras_fixture_model(keras_fixtures, method):
    model = fbi_ref.load_model(keras_fixtures / "small_vgg_k3.keras")
    x = np.load(keras_fixtures / "small_vgg_forward_reference.npz")["x"]
    net = torch_model(model)
    ours = fbi_ref.explain(model, x, method)
    theirs, logits = torch_attribution(net, x, ours.target, method)
    np.testing.assert_allclose(logits, ours.logits, rtol=1e-5, atol=1e-5)
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours.attribution, theirs, rtol=1e-5, atol=1e-5 * scale)
