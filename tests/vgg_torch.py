"""torchvision's VGG rebuilt in plain torch (torchvision itself does not import beside the torch 2.13 wheel here):
the same module tree, names and state-dict keys as torchvision.models.vgg, and its forward pass recorded under
fbi_ref's Keras layer names. Imported by the tests only when torch is installed."""
import numpy as np
import torch

from tests.torch_port import GuidedReLU  # noqa: F401 (the same rule as the validation port; used below)

# torchvision.models.vgg.cfgs: A = VGG11, B = VGG13, D = VGG16, E = VGG19.
CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(torch.nn.Module):
    """torchvision.models.VGG: features, AdaptiveAvgPool2d((7, 7)), classifier (Linear, ReLU, Dropout) x 2 + Linear."""

    def __init__(self, cfg, batch_norm=False, width=1, fc=4096, classes=1000, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            v = v // width
            layers.append(torch.nn.Conv2d(channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(torch.nn.BatchNorm2d(v))
            layers.append(torch.nn.ReLU(inplace=False))
            channels = v
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(channels * 7 * 7, fc), torch.nn.ReLU(False), torch.nn.Dropout(),
            torch.nn.Linear(fc, fc), torch.nn.ReLU(False), torch.nn.Dropout(), torch.nn.Linear(fc, classes))
        with torch.no_grad():  # batch norm statistics far from the identity, so that folding them is tested
            for module in self.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                    module.bias.uniform_(-0.05, 0.05)
        self.eval()

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def state_dict_numpy(self):
        """The state dict as NumPy arrays."""
        return {key: value.detach().numpy().copy() for key, value in self.state_dict().items()}


def activations(net, x_nhwc, relu=None):
    """(logits (N, K), {Keras layer name: activation in NHWC / (N, units)}) of torch's forward pass on x (N, H, W, 3).

    relu: a function replacing ReLU (e.g. a guided one); x may require grad (pass a tensor then).
    """
    x = x_nhwc if isinstance(x_nhwc, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x_nhwc))
    a = x.permute(0, 3, 1, 2)
    out, block, conv = {}, 1, 0
    for module in net.features:
        if isinstance(module, torch.nn.ReLU):
            a = relu(a) if relu else module(a)
            out[f"block{block}_conv{conv}"] = a
            continue
        a = module(a)
        if isinstance(module, torch.nn.Conv2d):
            conv += 1
        if isinstance(module, torch.nn.MaxPool2d):
            out[f"block{block}_pool"] = a
            block, conv = block + 1, 0
    a = net.avgpool(a)
    out["flatten"] = a.permute(0, 2, 3, 1).reshape(a.shape[0], -1)  # fbi_ref's (H, W, C) order
    a = torch.flatten(a, 1)  # torch's (C, H, W) order
    linear = 0
    for module in net.classifier:
        if isinstance(module, torch.nn.Linear):
            a, linear = module(a), linear + 1
        elif isinstance(module, torch.nn.ReLU):
            a = relu(a) if relu else module(a)
            out[f"fc{linear}"] = a
    out["predictions"] = torch.softmax(a, dim=1)
    return a, out


def input_gradient(net, x_nhwc, target, guided=False):
    """d logit_target / d x (N, H, W, 3) by torch autograd, with guided ReLUs when guided=True."""
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc)).requires_grad_(True)
    logits, _ = activations(net, x, GuidedReLU.apply if guided else None)
    logits[torch.arange(len(target)), torch.as_tensor(target)].sum().backward()
    return x.grad.numpy()
