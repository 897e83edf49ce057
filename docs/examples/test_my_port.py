"""A re-implementer's own test: a PyTorch VGG gradient checked against fbi_ref inside pytest.

    pip install fbi_ref torch pytest
    pytest test_my_port.py
"""
import pytest
import torch
import torch.nn.functional as F

import fbi_ref.testing

BLOCKS = (2, 2, 3, 3, 3)  # VGG16: convolutions per block; each block ends in a 2 x 2 max-pool


def tensor(array):
    return torch.from_numpy(array)


def my_vgg_logits(x, weights, flatten_like_torch=False):
    """My VGG16 on NCHW input, from fbi_ref's weights: conv kernels HWIO, dense kernels (in, out)."""
    a = x
    for block, convs in enumerate(BLOCKS, start=1):
        for conv in range(1, convs + 1):
            w = weights[f"block{block}_conv{conv}"]
            kernel = tensor(w["kernel"]).permute(3, 2, 0, 1)  # HWIO -> OIHW
            a = F.relu(F.conv2d(a, kernel, tensor(w["bias"]), padding=1))
        a = F.max_pool2d(a, 2)
    # fbi_ref's first dense kernel has its rows in (H, W, C) order: flatten in that order
    a = a.flatten(1) if flatten_like_torch else a.permute(0, 2, 3, 1).flatten(1)
    for name in ("fc1", "fc2"):
        a = F.relu(a @ tensor(weights[name]["kernel"]) + tensor(weights[name]["bias"]))
    return a @ tensor(weights["predictions"]["kernel"]) + tensor(weights["predictions"]["bias"])


def my_gradient(x, weights, flatten_like_torch=False):
    """The gradient of each image's top logit w.r.t. its input, under fbi_ref's key names."""
    x = tensor(x).requires_grad_(True)
    logits = my_vgg_logits(x, weights, flatten_like_torch)
    target = logits.argmax(dim=1)
    logits.gather(1, target[:, None]).sum().backward()
    return {"logits": logits, "target": target, "attr/gradient": x.grad}


def test_my_gradient_matches_fbi_ref():
    fbi_ref.testing.check_port(my_gradient, model="shapes", methods=["gradient"], layout="nchw")


def test_a_wrong_flatten_order_is_caught_where_it_acts():
    def wrong(x, weights):
        return my_gradient(x, weights, flatten_like_torch=True)

    with pytest.raises(AssertionError, match="first divergence: logits"):
        fbi_ref.testing.check_port(wrong, model="shapes", methods=["gradient"], layout="nchw")
