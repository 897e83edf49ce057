"""An independent PyTorch port of fbi_ref's methods, written from docs/methods.md and docs/reference-format.md
(not from fbi_ref's code), as a re-implementer would write it; and the bugs such a port typically has.

It reads an fbi_ref reference file (which must hold the weights: `fbi-ref reference --with-weights`), builds
the network from meta["layers"] and the w/... arrays, runs every method the reference holds, and writes its
own arrays in its own layout (NCHW; compare with --layout nchw). Gradients come from autograd (with custom
ReLU backward passes for DeconvNet and guided backprop, as Captum does it); LRP and FBI are written out layer
by layer. `bugs` plants one or more mistakes from BUGS, to check that `fbi-ref compare` catches each one at
the first array where it goes wrong.

`rounding="other"` makes the port a correct one whose float32 rounding breaks near ties the other way, on
purpose: at every max-pool window whose two largest values (of its own, both positive) are within NEAR_TIE of
the layer's largest value, the runner-up is raised to one ulp above the maximum, so that it wins. Which windows a real
port's rounding flips depends on the CPU and the BLAS (on some CPUs none); this flips them on every machine.

    python tests/torch_port.py ref.npz mine.npz [--float64] [--bug flatten_chw] [--images a.png b.png]
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

BUGS = {
    "flipped_kernels": "convolution kernels flipped in space (a true convolution instead of a cross-correlation)",
    "swapped_kernel_axes": "HWIO read as WHIO: the kernel's two spatial axes swapped",
    "flatten_chw": "flatten in PyTorch's (C, H, W) order instead of Keras's (H, W, C)",
    "no_bgr": "images preprocessed without the RGB -> BGR swap",
    "guided_with_deconvnet_rule": "guided backprop with DeconvNet's ReLU rule (no forward mask)",
    "softmax_target": "gradient of the softmax probability instead of the logit",
    "last_max_on_ties": "max-pool ties go to the last maximum of the window",
    "gradcam_align_corners": "Grad-CAM upsampled with align_corners=True",
    "gradcam_nearest": "Grad-CAM upsampled with nearest-neighbour interpolation",
    "ig_left_riemann": "integrated gradients with the left Riemann sum (alpha = i / m)",
    "fbi_bias_ignored": "FBI's dense adjoint without subtracting the bias",
    "fbi_no_min": "FBI's unpooling replicates without the min with the forward activation",
    "fbi_topk_forward_score": "FBI's top-k scored by the forward maps instead of the backward ones",
    "fbi_mask_ge": "FBI's mask keeps g * a >= tau instead of > tau",
    "fbi_topk_round_half_even": "FBI's k * C rounded half to even (Python's round: 2.5 -> 2) instead of half up",
    "fbi_no_image_mask": "FBI's mask not applied at the image",
    "fbi_contrast_cancellation": "FBI's contrast start e_c - p computed as one-hot minus softmax (1 - p_c cancels)",
}
NEAR_TIE = 1e-6  # rounding="other": the windows whose two largest values are this close (x the layer's maximum)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
SINGLE_WALK = ("gradient", "deconvnet", "guided_backprop", "lrp_epsilon", "lrp_zplus")


class Port:
    """The network of a reference file, in PyTorch, NCHW, and every method on it."""

    def __init__(self, ref, dtype=torch.float32, bugs=(), rounding="own"):
        unknown = set(bugs) - set(BUGS)
        if unknown:
            raise ValueError(f"unknown bugs {sorted(unknown)}")
        self.meta = json.loads(str(ref["meta"]))
        self.layers = self.meta["layers"]
        self.dtype, self.bugs, self.rounding = dtype, set(bugs), rounding
        self.weights = {}
        for layer in self.layers:
            if layer["type"] in ("Conv2D", "Dense"):
                kernel = torch.tensor(np.asarray(ref[f"w/{layer['name']}/kernel"]), dtype=dtype)
                bias = torch.tensor(np.asarray(ref[f"w/{layer['name']}/bias"]), dtype=dtype)
                if layer["type"] == "Conv2D":
                    kernel = kernel.permute(3, 2, 1, 0) if "swapped_kernel_axes" in self.bugs \
                        else kernel.permute(3, 2, 0, 1)  # HWIO -> OIHW
                    if "flipped_kernels" in self.bugs:
                        kernel = kernel.flip(2, 3)
                self.weights[layer["name"]] = (kernel, bias)
        self.options = self.meta["methods"]
        self.step_switches = {}  # method -> {pool: (N, steps, C, Ho, Wo)}: the winners on each input it ran

    # --- forward ---------------------------------------------------------------------------------

    def preprocess(self, rgb):
        """Images (N, H, W, 3) RGB 0..255 -> the network's input (N, 3, H, W): caffe mode."""
        x = rgb.astype(np.float64)
        if "no_bgr" not in self.bugs:
            x = x[..., ::-1]
        x = x - np.array(CAFFE_MEAN_BGR)
        return torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), dtype=self.dtype)

    def forward(self, x, relu=torch.relu):
        """Every layer's output by name (NCHW, or (N, F)), the logits, the max-pool switches."""
        out, z, switches, a = {}, None, {}, x
        for layer in self.layers:
            kind, name = layer["type"], layer["name"]
            if kind == "Conv2D":
                z = self.conv(a, name, layer)
            elif kind == "Dense":
                kernel, bias = self.weights[name]
                z = a @ kernel + bias
            elif kind == "MaxPool2D":
                if self.rounding == "other":
                    a = out[self.layers[self.layers.index(layer) - 1]["name"]] = self.other_rounding(a, layer)
                z, switches[name] = self.max_pool(a, layer)
            elif kind == "Flatten":
                z = (a if "flatten_chw" in self.bugs else a.permute(0, 2, 3, 1)).reshape(len(a), -1)
            else:
                raise NotImplementedError(kind)
            activation = layer.get("activation", "linear")
            a = relu(z) if activation == "relu" else torch.softmax(z, 1) if activation == "softmax" else z
            out[name] = a
        return out, z, switches  # z: the last layer's pre-activation, the logits

    def conv(self, a, name, layer):
        """Cross-correlation with TensorFlow's 'same' padding (the smaller half before)."""
        kernel, bias = self.weights[name]
        stride = layer["strides"]
        if layer["padding"] == "same":
            a = F.pad(a, same_padding(a.shape[2:], kernel.shape[2:], stride))
        return F.conv2d(a, kernel, bias, stride=stride)

    def max_pool(self, a, layer):
        """(pooled (N, C, Ho, Wo), switches: the flat index ih * W + iw of each window's first maximum)."""
        (ph, pw), (sh, sw) = layer["pool_size"], layer["strides"]
        assert layer["padding"] == "valid"
        n, c, h, w = a.shape
        windows = a.unfold(2, ph, sh).unfold(3, pw, sw)  # (N, C, Ho, Wo, ph, pw)
        flat = windows.reshape(*windows.shape[:4], ph * pw)
        if "last_max_on_ties" in self.bugs:
            k = ph * pw - 1 - flat.flip(-1).argmax(-1)
        else:
            k = flat.argmax(-1)  # torch returns the first maximal index
        ho, wo = windows.shape[2:4]
        rows = torch.arange(ho).view(1, 1, ho, 1) * sh + k // pw
        cols = torch.arange(wo).view(1, 1, 1, wo) * sw + k % pw
        index = rows * w + cols  # (N, C, Ho, Wo)
        return flat.gather(-1, k.unsqueeze(-1)).squeeze(-1), index

    def other_rounding(self, a, layer):
        """The pool's input a (N, C, H, W) with every near tie broken toward the runner-up: at each window whose
        two largest values are within NEAR_TIE x max|a|, the runner-up becomes one ulp above the maximum."""
        (ph, pw), (sh, sw) = layer["pool_size"], layer["strides"]
        assert (ph, pw) == (sh, sw) and layer["padding"] == "valid", "only non-overlapping windows are ported"
        n, c, h, w = a.shape
        ho, wo = h // ph, w // pw
        flat = a.detach()[:, :, :ho * ph, :wo * pw].reshape(n, c, ho, ph, wo, pw).permute(0, 1, 2, 4, 3, 5)
        flat = flat.reshape(n, c, ho, wo, ph * pw)  # each window's cells in row-major order
        ranked = flat.sort(dim=-1, descending=True, stable=True)
        top, second = ranked.values[..., 0], ranked.values[..., 1]
        # both positive: the runner-up's ReLU is open, so raising its output keeps the forward pass consistent
        near = (top - second <= NEAR_TIE * float(a.detach().abs().max())) & (second > 0)
        runner_up = ranked.indices[..., 1]  # the second in order among equal values
        above = torch.nextafter(top, torch.full_like(top, math.inf))
        delta = torch.zeros_like(flat).scatter_(-1, runner_up.unsqueeze(-1), (above - second).unsqueeze(-1))
        delta = delta * near.unsqueeze(-1)
        delta = delta.reshape(n, c, ho, wo, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho * ph, wo * pw)
        return a + F.pad(delta, (0, w - wo * pw, 0, h - ho * ph))

    # --- the methods -------------------------------------------------------------------------------

    def explain(self, method, x, target):
        """{key: NCHW array} for one method: its walk (single-walk methods), attribution, and extras."""
        options = self.options.get(method, {})
        if method in ("gradient", "gradient_x_input", "deconvnet", "guided_backprop"):
            rule = "guided" if method == "guided_backprop" else "deconvnet" if method == "deconvnet" else "plain"
            if rule == "guided" and "guided_with_deconvnet_rule" in self.bugs:
                rule = "deconvnet"
            output = options.get("output", "logit")
            if "softmax_target" in self.bugs and method == "gradient":
                output = "probability"
            grad, walk = self.autograd(x, target, rule, output, record=True)
            attr = grad * x if method == "gradient_x_input" else grad
            keys = {} if method == "gradient_x_input" else {f"{method}/backward/{k}": v for k, v in walk.items()}
            return {**keys, f"attr/{method}": attr}
        if method in ("lrp_epsilon", "lrp_zplus"):
            walk = self.lrp(x, target, method, options)
            return {**{f"{method}/backward/{k}": v for k, v in walk.items()}, f"attr/{method}": walk["input"]}
        if method in ("gradcam", "guided_gradcam"):
            cam, weights, small = self.gradcam(x, target, options["layer"])
            attr = cam.unsqueeze(1).expand_as(x)
            extra = {"gradcam/weights": weights, "gradcam/map": small} if method == "gradcam" else {}
            if method == "guided_gradcam":
                attr = self.autograd(x, target, "guided", "logit")[0] * cam.unsqueeze(1)
            return {**extra, f"attr/{method}": attr}
        if method == "integrated_gradients":
            return {"attr/integrated_gradients": self.integrated_gradients(x, target, options)}
        if method == "smoothgrad":
            return {"attr/smoothgrad": self.smoothgrad(x, target, options)}
        if method == "occlusion":
            return {"attr/occlusion": self.occlusion(x, target, options)}
        if method == "fbi":
            return self.fbi(x, target, options)
        raise NotImplementedError(method)

    def autograd(self, x, target, rule="plain", output="logit", record=False):
        """d output_target / d x by autograd, the ReLUs' backward passes replaced for DeconvNet and guided
        backprop; with record, also the gradient at every layer's output (the walk), by position."""
        x = x.clone().requires_grad_(True)
        relu = {"plain": torch.relu, "deconvnet": DeconvReLU.apply, "guided": GuidedReLU.apply}[rule]
        out, logits, self.last_switches = self.forward(x, relu)
        kept = list(out.items())[:-1] + [(self.layers[-1]["name"], logits)]  # the top position is the logits
        for _, tensor in kept:
            tensor.retain_grad()
        chosen = logits if output == "logit" else torch.softmax(logits, 1)
        chosen[torch.arange(len(target)), target].sum().backward()
        walk = {name: tensor.grad.detach() for name, tensor in reversed(kept)} if record else {}
        walk["input"] = x.grad.detach()
        return x.grad.detach(), walk

    def lrp(self, x, target, method, options):
        """LRP-epsilon or LRP-z+ (with the z^B rule at the image), layer by layer from the logits."""
        out, logits, switches = self.forward(x)
        inputs = [x] + [out[layer["name"]] for layer in self.layers[:-1]]
        relevance = F.one_hot(target, logits.shape[1]).to(self.dtype) * logits
        walk = {self.layers[-1]["name"]: relevance}
        low = torch.tensor([-m for m in CAFFE_MEAN_BGR], dtype=self.dtype).view(1, 3, 1, 1)
        high = low + 255
        for i in range(len(self.layers) - 1, -1, -1):
            layer, a = self.layers[i], inputs[i]
            kind = layer["type"]
            if kind in ("Conv2D", "Dense"):
                kernel, bias = self.weights[layer["name"]]
                lin = (lambda v, k=kernel, lay=layer: self.linear(v, lay, k))
                lin_t = (lambda g, k=kernel, lay=layer, shape=a.shape: self.linear_adjoint(g, lay, k, shape))
                if method == "lrp_epsilon":
                    z = lin(a) + (bias.view(1, -1, 1, 1) if kind == "Conv2D" else bias)
                    eps = options["epsilon"]
                    s = relevance / (z + eps * torch.where(z >= 0, 1.0, -1.0))
                    relevance = a * lin_t(s)
                elif i > 0:
                    plus = kernel.clamp(min=0)
                    z = self.linear(a, layer, plus)
                    s = torch.where(z > 0, relevance / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(z))
                    relevance = a * self.linear_adjoint(s, layer, plus, a.shape)
                else:
                    plus, minus = kernel.clamp(min=0), kernel.clamp(max=0)
                    lo, hi = low.expand_as(a), high.expand_as(a)
                    z = lin(a) - self.linear(lo, layer, plus) - self.linear(hi, layer, minus)
                    s = relevance / z
                    relevance = (a * lin_t(s) - lo * self.linear_adjoint(s, layer, plus, a.shape)
                                 - hi * self.linear_adjoint(s, layer, minus, a.shape))
            elif kind == "MaxPool2D":
                relevance = unpool_switch(relevance, switches[layer["name"]], a.shape)
            elif kind == "Flatten":
                relevance = relevance.reshape(len(a), a.shape[2], a.shape[3], a.shape[1]).permute(0, 3, 1, 2)
            walk["input" if i == 0 else self.layers[i - 1]["name"]] = relevance
        return walk

    def linear(self, a, layer, kernel):
        """W a without bias (conv with the layer's padding, or dense)."""
        if layer["type"] == "Dense":
            return a @ kernel
        stride = layer["strides"]
        if layer["padding"] == "same":
            a = F.pad(a, same_padding(a.shape[2:], kernel.shape[2:], stride))
        return F.conv2d(a, kernel, None, stride=stride)

    def linear_adjoint(self, g, layer, kernel, input_shape):
        """W^T g: the transposed convolution (cropped to the input), or g W^T."""
        if layer["type"] == "Dense":
            return g @ kernel.T
        stride = layer["strides"]
        full = F.conv_transpose2d(g, kernel, None, stride=stride)
        left, _, top, _ = same_padding(input_shape[2:], kernel.shape[2:], stride) if layer["padding"] == "same" \
            else (0, 0, 0, 0)
        h, w = input_shape[2:]
        full = F.pad(full, (0, max(0, left + w - full.shape[3]), 0, max(0, top + h - full.shape[2])))
        return full[:, :, top:top + h, left:left + w]

    def gradcam(self, x, target, layer_name):
        """(map upsampled to the input (N, H, W), weights alpha (N, K), map at the layer (N, h, w))."""
        x = x.clone().requires_grad_(True)
        out, logits, _ = self.forward(x)
        feature = out[layer_name]
        feature.retain_grad()
        logits[torch.arange(len(target)), target].sum().backward()
        alpha = feature.grad.mean(dim=(2, 3))  # (N, K)
        small = torch.relu((feature * alpha[:, :, None, None]).sum(1)).detach()  # (N, h, w)
        size = x.shape[2:]
        if "gradcam_nearest" in self.bugs:
            up = F.interpolate(small[:, None], size=size, mode="nearest")
        else:
            up = F.interpolate(small[:, None], size=size, mode="bilinear",
                               align_corners="gradcam_align_corners" in self.bugs)
        return up[:, 0], alpha.detach(), small

    def integrated_gradients(self, x, target, options):
        """(x - b) times the mean gradient at b + alpha (x - b), alpha = (i + 1/2) / m (midpoint rule)."""
        assert options["baseline"] == "zeros"
        steps = options["steps"]
        total, switches = torch.zeros_like(x), []
        for i in range(steps):
            alpha = i / steps if "ig_left_riemann" in self.bugs else (i + 0.5) / steps
            total += self.autograd(alpha * x, target)[0]
            switches.append(self.last_switches)
        self.step_switches["integrated_gradients"] = stack_switches(switches)
        return x * total / steps

    def smoothgrad(self, x, target, options, noise=None):
        """The mean gradient over x plus each stored noise sample."""
        noise = self.noise if noise is None else noise  # (N, S, C, H, W)
        assert options["base"] == "gradient"
        total, switches = torch.zeros_like(x), []
        for s in range(noise.shape[1]):
            total += self.autograd(x + noise[:, s], target)[0]
            switches.append(self.last_switches)
        self.step_switches["smoothgrad"] = stack_switches(switches)
        return total / noise.shape[1]

    def occlusion(self, x, target, options):
        """Per pixel, the mean drop of the target logit over the patches covering it."""
        patch, stride, fill = options["patch"], options["stride"], options["fill"]
        n, c, h, w = x.shape
        with torch.no_grad():
            base = self.forward(x)[1][torch.arange(n), target]
            drop, count = torch.zeros(n, h, w, dtype=self.dtype), torch.zeros(h, w, dtype=self.dtype)
            for i in range(0, h - patch + 1, stride):
                for j in range(0, w - patch + 1, stride):
                    covered = x.clone()
                    covered[:, :, i:i + patch, j:j + patch] = fill
                    drop[:, i:i + patch, j:j + patch] += (base - self.forward(covered)[1][torch.arange(n), target])[:, None, None]
                    count[i:i + patch, j:j + patch] += 1
        return (drop / count.clamp(min=1)).unsqueeze(1).expand(n, c, h, w)

    def fbi(self, x, target, options):
        """FBI's walk, written out from docs/methods.md: {fbi/support/<pos>, fbi/backward/<pos>, attr/fbi}."""
        out, logits, switches = self.forward(x)
        inputs = [x] + [out[layer["name"]] for layer in self.layers[:-1]]
        ported = {"start": ("maxmin", "onehot", "contrast"), "dense_bias": ("subtract", "ignore"),
                  "mask_dense": (True, False), "topk_layers": ("top", "all"), "start_from": ("logits",),
                  "start_relu": (False,), "conv_bias": ("ignore",), "unpool": ("min-replicate",),
                  "unpool_min": ("input",), "mask_pools": (False,), "topk_score": ("backward",),
                  "topk_sum": ("signed",), "topk_position": ("conv",), "topk_order": ("before-relu",),
                  "mask_image": (True, False)}
        for name, values in ported.items():
            if options.get(name, values[0]) not in values:
                raise NotImplementedError(f"this port does not implement FBI's {name}={options[name]!r}")
        hot = F.one_hot(target, logits.shape[1])
        if options.get("start", "maxmin") == "maxmin":
            g = torch.where(hot.bool(), logits.max(1, keepdim=True).values, logits.min(1, keepdim=True).values)
        else:  # one-hot, or the contrast e_c - softmax(z)
            g = hot.to(logits.dtype)
            if options["start"] == "contrast" and "fbi_contrast_cancellation" in self.bugs:
                g = g - torch.softmax(logits, 1)
            elif options["start"] == "contrast":  # e_c - p, its target entry as the sum of the others (no cancellation)
                p = torch.softmax(logits, 1)
                g = torch.where(hot.bool(), (p * (1 - g)).sum(1, keepdim=True), -p)
        keys = {f"fbi/backward/{self.layers[-1]['name']}": g}
        convs = [i for i, layer in enumerate(self.layers) if layer["type"] == "Conv2D"]
        topk_at = convs if options.get("topk_layers", "top") == "all" else convs[-1:]
        for i in range(len(self.layers) - 1, -1, -1):
            layer, a_in, name = self.layers[i], inputs[i], self.layers[i]["name"]
            below = "input" if i == 0 else self.layers[i - 1]["name"]
            if i in topk_at:  # top-k feature maps at the (top) conv layer's output
                score = out[name] if "fbi_topk_forward_score" in self.bugs else g
                channels = g.shape[1]
                rounded = round(options["k"] * channels) if "fbi_topk_round_half_even" in self.bugs else \
                    math.floor(options["k"] * channels + 0.5)  # half up, as docs/methods.md says
                count = max(1, int(rounded)) if isinstance(options["k"], float) else min(options["k"], channels)
                order = torch.sort(-score.sum((2, 3)), dim=1, stable=True).indices[:, :count]
                keep = torch.zeros(g.shape[:2], dtype=torch.bool).scatter_(1, order, True)[:, :, None, None].expand_as(g)
                keys.pop(f"fbi/backward/{name}", None)
                if f"fbi/support/{name}" in keys:  # the mask below the next conv sits here too: their AND
                    keep = keep & keys[f"fbi/support/{name}"]
                keys[f"fbi/support/{name}"], keys[f"fbi/backward/{name}"] = keep, g * keep
                g = g * keep
            if layer.get("activation") == "relu":
                g = torch.relu(g)
            if layer["type"] in ("Conv2D", "Dense"):
                kernel, bias = self.weights[name]
                if layer["type"] == "Dense" and options.get("dense_bias", "subtract") == "subtract" \
                        and "fbi_bias_ignored" not in self.bugs:
                    g = g - bias
                g = self.linear_adjoint(g, layer, kernel, a_in.shape)
                masked = layer["type"] == "Conv2D" or options.get("mask_dense", True)
                at_image = i == 0 and ("fbi_no_image_mask" in self.bugs or not options.get("mask_image", True))
                if masked and not at_image:
                    product = g * a_in
                    threshold = options["tau"]
                    if options["tau_mode"] == "relative" and math.isfinite(threshold):
                        largest = product.reshape(len(g), -1).max(1).values.clamp(min=0)
                        threshold = threshold * largest.view(-1, *[1] * (g.dim() - 1))
                    keep = product >= threshold if "fbi_mask_ge" in self.bugs else product > threshold
                    g = g * keep
                    keys[f"fbi/support/{below}"] = keep
            elif layer["type"] == "MaxPool2D":
                (ph, pw), stride = layer["pool_size"], layer["strides"]
                spread = g.repeat_interleave(ph, 2).repeat_interleave(pw, 3)
                spread = F.pad(spread, (0, a_in.shape[3] - spread.shape[3], 0, a_in.shape[2] - spread.shape[2]))
                assert (ph, pw) == tuple(stride), "overlapping windows are not ported"
                g = spread if "fbi_no_min" in self.bugs else torch.minimum(a_in, spread)
            elif layer["type"] == "Flatten":
                g = g.reshape(len(g), a_in.shape[2], a_in.shape[3], a_in.shape[1]).permute(0, 3, 1, 2)
            keys[f"fbi/backward/{below}"] = g
        return {**keys, "attr/fbi": g}


class GuidedReLU(torch.autograd.Function):
    """ReLU; backward keeps the gradient where the input and the gradient are positive."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (z > 0) * (g > 0)


class DeconvReLU(torch.autograd.Function):
    """ReLU; backward is the ReLU of the gradient (DeconvNet)."""

    @staticmethod
    def forward(ctx, z):
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


def stack_switches(per_input):
    """[{pool: (N, C, Ho, Wo)}] for each input -> {pool: (N, inputs, C, Ho, Wo)}."""
    return {name: torch.stack([s[name] for s in per_input], dim=1) for name in per_input[0]}


def same_padding(size, kernel, stride):
    """F.pad's (left, right, top, bottom) for TensorFlow's 'same': the smaller half before."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        out = math.ceil(n / s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return (left, right, top, bottom)


def unpool_switch(g, index, input_shape):
    """Each value of g (N, C, Ho, Wo) added at its window's winner of a zero (N, C, H, W)."""
    n, c, h, w = input_shape
    out = torch.zeros(n, c, h * w, dtype=g.dtype)
    out.scatter_add_(2, index.reshape(n, c, -1), g.reshape(n, c, -1))
    return out.reshape(n, c, h, w)


def run(ref, dtype=torch.float32, bugs=(), rgb=None, methods=None, rounding="own"):
    """The port's arrays for every method the reference holds (or those of `methods`), as {key: numpy array},
    4-D arrays NCHW.

    ref: the reference as {key: array} (with w/...); rgb: the images (N, H, W, 3) RGB to preprocess itself,
    else the reference's own x is used; rounding: "own", or "other" (near ties broken the other way, see the
    module docstring).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its arrays are small; two threads under load ran 10x slower (12.7 s vs 133 s)
    try:
        return _run(ref, dtype, bugs, rgb, methods, rounding)
    finally:
        torch.set_num_threads(threads)


def _run(ref, dtype, bugs, rgb, methods, rounding):
    port = Port(ref, dtype, bugs, rounding)
    x = port.preprocess(rgb) if rgb is not None else torch.tensor(np.asarray(ref["x"]).transpose(0, 3, 1, 2).copy(), dtype=dtype)
    if "smoothgrad/noise" in ref:
        port.noise = torch.tensor(np.asarray(ref["smoothgrad/noise"]).transpose(0, 1, 4, 2, 3).copy(), dtype=dtype)
    with torch.no_grad():
        out, logits, switches = port.forward(x)
    target = torch.tensor(np.asarray(ref["target"]))
    arrays = {"x": x, **{f"act/{k}": v for k, v in out.items()}, **{f"switch/{k}": v for k, v in switches.items()},
              "logits": logits, "probs": torch.softmax(logits, 1), "target": target}
    for method in port.meta["methods"]:
        if methods is None or method in methods:
            arrays.update(port.explain(method, x, target))
    for method, switches in port.step_switches.items():
        arrays.update({f"{method}/switch/{name}": v for name, v in switches.items()})
    return {k: (v.detach().numpy() if torch.is_tensor(v) else np.asarray(v)) for k, v in arrays.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref")
    parser.add_argument("out")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--bug", action="append", default=[], choices=sorted(BUGS))
    parser.add_argument("--images", nargs="+", help="preprocess these images itself instead of reading x")
    args = parser.parse_args(argv)
    ref = dict(np.load(args.ref))
    rgb = None
    if args.images:
        from PIL import Image
        h, w = ref["x"].shape[1:3]
        rgb = np.stack([np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.NEAREST)) for p in args.images])
    arrays = run(ref, torch.float64 if args.float64 else torch.float32, args.bug, rgb)
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
