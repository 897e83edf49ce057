"""The methods that are more than one walk: Grad-CAM (a walk to a conv layer), integrated gradients and
SmoothGrad (many walks), occlusion (many forward passes). Their options are checked by their records in
catalog.py before they run."""
import dataclasses

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.errors import InputError
from fbi_ref.methods import rules as R
from fbi_ref.methods.tables import GRADIENT, GUIDED_BACKPROP
from fbi_ref.methods.traversal import walk
from fbi_ref.nn.geometry import resize_bilinear
from fbi_ref.nn.network import Conv2D


def target_walk(model, fp, target, rules):
    """The walk of a method's rules from the target logits (N,) to the image through a forward pass:
    (N, H, W, C)."""
    return walk(model, fp, R.start_onehot(fp.logits, fp.probs, target), rules).signal  # (N, H, W, C)


def target_gradient(model, x, target, rules=GRADIENT):
    """The backward signal of the target logits at the image, for a batch x (B, H, W, C) and targets (B,)."""
    return target_walk(model, model.forward(x), target, rules)  # (B, H, W, C)


def last_conv_name(model):
    """Name of the last Conv2D layer (Grad-CAM's default layer)."""
    names = [layer.name for layer in model.layers if isinstance(layer, Conv2D)]
    if not names:
        raise InputError(f"{model.name} has no Conv2D layer for Grad-CAM")
    return names[-1]


def gradcam(model, fp, target, layer=None):
    """Grad-CAM maps (N, H, W): ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of d logit_c / d A_k, upsampled."""
    return gradcam_parts(model, fp, target, layer)[2]


def gradcam_parts(model, fp, target, layer=None, switches=None):
    """Grad-CAM step by step: (weights alpha (N, K), map at the layer (N, h, w), map upsampled (N, H, W)).

    switches: max-pool switches to route the gradient with instead of fp's own (fbi_ref.reference.replay).
    """
    name = layer or last_conv_name(model)
    start = R.start_onehot(fp.logits, fp.probs, target)
    routed = fp if switches is None else dataclasses.replace(fp, switches=switches)
    g = walk(model, routed, start, GRADIENT, stop_at=name).signal  # (N, h, w, K)
    alpha = g.mean(axis=(1, 2))  # (N, K)
    cam = np.maximum((fp.outputs[name] * alpha[:, None, None, :]).sum(axis=-1), 0)  # (N, h, w)
    return alpha, cam, resize_bilinear(cam, model.input_shape[:2])


def baseline_image(model, x, baseline):
    """The reference image for integrated gradients: 'zeros', 'black' (by the model's preprocessing), or an array."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(x)
        if baseline == "black":
            black = model.preprocessing.forward(np.zeros((1, 1, 1, 3), x.dtype))  # (1, 1, 1, 3), by the model's rule
            return np.broadcast_to(black, x.shape).copy()
        raise InputError(f"baseline must be 'zeros', 'black' or an array; got {baseline!r}")
    try:
        with np.errstate(over="ignore"):  # a value beyond the dtype becomes inf, refused below
            b = np.asarray(baseline, dtype=x.dtype)
        b = np.broadcast_to(b, x.shape).copy()
    except (ValueError, TypeError):
        given = f"an array of shape {np.shape(baseline)}" if hasattr(baseline, "shape") else repr(baseline)[:60]
        raise InputError(f"baseline must be 'zeros', 'black' or an array that broadcasts to the input {x.shape}; "
                         f"got {' '.join(given.split())}") from None
    if not np.isfinite(b).all():
        raise InputError("baseline contains NaN or inf")
    return b


def integrated_gradients(model, x, target, baseline="zeros", steps=64, batch_size=32, progress=False,
                         gradient_at=None):
    """(x - b) * mean over the midpoint rule alpha = (i + 1/2) / steps of the gradient at b + alpha (x - b).

    The steps of one image go through the network `batch_size` at a time. gradient_at(n, steps, inputs) -> the
    target gradient (B, H, W, C) at inputs (B, H, W, C) of image n (`steps`: their indices); by default
    `target_gradient` (the replay of compare passes its own, to recompute exactly these batches).
    """
    if gradient_at is None:
        gradient_at = lambda n, rows, inputs: target_gradient(model, inputs, np.full(len(inputs), target[n]))  # noqa: E731
    base = baseline_image(model, x, baseline)
    alphas = ig_alphas(steps, x.dtype)  # (steps,)
    total = np.zeros_like(x)  # (N, H, W, C)
    chunks = [(n, np.arange(i, min(i + batch_size, steps))) for n in range(len(x)) for i in range(0, steps, batch_size)]
    for n, rows in tqdm(chunks, desc="integrated gradients", disable=not progress, leave=False):
        path = base[n] + alphas[rows][:, None, None, None] * (x[n] - base[n])  # (B, H, W, C)
        total[n] += gradient_at(n, rows, path).sum(axis=0)
    return (x - base) * total / steps


def ig_alphas(steps, dtype):
    """The midpoint rule's alpha_i = (i + 1/2) / steps, i = 0 .. steps - 1, in the input's dtype."""
    return ((np.arange(steps) + 0.5) / steps).astype(dtype)


SMOOTHGRAD_BASES = {"gradient": GRADIENT, "guided_backprop": GUIDED_BACKPROP}


def smoothgrad(model, x, target, base="gradient", samples=50, noise=0.15, seed=0, batch_size=16, progress=False,
               gradient_at=None):
    """The mean of the base method's attribution over noisy copies x + N(0, (noise * (max x - min x))^2).

    The samples of one image go through the network `batch_size` at a time; gradient_at(n, samples, inputs) as
    in `integrated_gradients` (by default the base method's walk).
    """
    rules = SMOOTHGRAD_BASES[base]
    if gradient_at is None:
        gradient_at = lambda n, rows, inputs: target_gradient(model, inputs, np.full(len(inputs), target[n]), rules)  # noqa: E731
    total = np.zeros_like(x)  # (N, H, W, C)
    for n in tqdm(range(len(x)), desc="smoothgrad", disable=not progress, leave=False):
        eps = smoothgrad_noise(x[n], samples, noise, seed)  # (samples, H, W, C)
        for i in range(0, samples, batch_size):
            rows = np.arange(i, min(i + batch_size, samples))
            total[n] += gradient_at(n, rows, x[n] + eps[rows]).sum(axis=0)
    return total / samples


def smoothgrad_noise(image, samples=50, noise=0.15, seed=0):
    """The noise SmoothGrad adds to one image (H, W, C): (samples, H, W, C) in the image's dtype.

    np.random.default_rng(seed).normal(0, sigma, size=(samples, H, W, C)) in float64, then cast, with
    sigma = noise * (max - min of the image): every image of a batch gets the same standard normal draws,
    scaled by its own sigma, so an image's result does not depend on its batch.
    """
    sigma = noise * (float(image.max()) - float(image.min()))
    return np.random.default_rng(seed).normal(0, sigma, size=(samples, *image.shape)).astype(image.dtype)


def occlusion(model, x, target, patch=None, stride=None, fill=0.0, batch_size=32, progress=False):
    """Per pixel, the mean drop of the target logit over the occluding patches (filled with `fill`) covering it.

    Defaults: patch = 1/8 of the input side, stride = half the patch. The map is repeated over channels.
    """
    h, w, c = model.input_shape
    patch = patch or max(1, h // 8)
    stride = stride or max(1, patch // 2)
    corners = [(i, j) for i in range(0, max(h - patch, 0) + 1, stride) for j in range(0, max(w - patch, 0) + 1, stride)]
    drop = np.zeros((len(x), h, w))  # (N, H, W)
    count = np.zeros((h, w))  # (H, W)
    for i, j in corners:
        count[i:i + patch, j:j + patch] += 1
    for n in tqdm(range(len(x)), desc="occlusion", disable=not progress, leave=False):
        ref = model.forward(x[n:n + 1]).logits[0, target[n]]
        for b in range(0, len(corners), batch_size):
            batch = np.repeat(x[n:n + 1], len(corners[b:b + batch_size]), axis=0)  # (B, H, W, C)
            for k, (i, j) in enumerate(corners[b:b + batch_size]):
                batch[k, i:i + patch, j:j + patch] = fill
            logits = model.forward(batch).logits[:, target[n]]  # (B,)
            for k, (i, j) in enumerate(corners[b:b + batch_size]):
                drop[n, i:i + patch, j:j + patch] += ref - logits[k]
    drop /= np.maximum(count, 1)
    return np.repeat(drop[..., None], c, axis=-1).astype(x.dtype)  # (N, H, W, C)
