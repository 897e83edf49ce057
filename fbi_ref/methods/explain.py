"""The public entry point: `explain(model, x, method=...)` and what it returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.methods import multipass
from fbi_ref.methods import options as check
from fbi_ref.methods import rules as R
from fbi_ref.methods.tables import GUIDED_BACKPROP, backprop_method
from fbi_ref.methods.traversal import walk
from fbi_ref.nn.model import Model

BACKPROP_METHODS = ("fbi", "gradient", "gradient_x_input", "deconvnet", "guided_backprop", "lrp_epsilon", "lrp_zplus")
OTHER_METHODS = ("gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion")
METHODS = BACKPROP_METHODS + OTHER_METHODS

# How each method's (N, H, W, C) attribution becomes a 2-D heat map (N, H, W): documented in docs/methods.md.
HEATMAP_REDUCTION = {
    "fbi": "max_abs", "gradient": "max_abs", "deconvnet": "max_abs", "guided_backprop": "max_abs",
    "smoothgrad": "max_abs", "guided_gradcam": "max_abs",
    "gradient_x_input": "sum", "integrated_gradients": "sum", "lrp_epsilon": "sum", "lrp_zplus": "sum",
    "gradcam": "mean", "occlusion": "mean",
}


# Upper bounds of the multi-pass methods' counts: more walks than MAX_PASSES per image would run for days on
# VGG16; a batch may take at most MAX_BATCH_BYTES of activations (a batch of 32 VGG16 images at 224 x 224 takes
# 2 GB) and hold at most MAX_BATCH images.
MAX_PASSES = 10_000
MAX_BATCH = 1024
MAX_BATCH_BYTES = 8 * 2**30


def heatmap(attribution, reduction):
    """(N, H, W, C) -> (N, H, W): 'max_abs' (max over channels of |a|), 'sum' (signed sum), 'mean'."""
    if reduction == "max_abs":
        return np.abs(attribution).max(axis=-1)
    if reduction == "sum":
        return attribution.sum(axis=-1)
    return attribution.mean(axis=-1)


@dataclass
class Explanation:
    """One method's explanation of a batch.

    attribution: (N, H, W, C) w.r.t. the preprocessed input; heatmap: (N, H, W), see HEATMAP_REDUCTION;
    target, probability: (N,) the explained class and its softmax probability; logits: (N, K);
    options: every option used (defaults filled in); backward / support: with record_layers=True, the
    backward signal and binary support at every position (a Keras layer name's output, or "input").
    """
    method: str
    attribution: np.ndarray
    heatmap: np.ndarray
    target: np.ndarray
    probability: np.ndarray
    logits: np.ndarray
    options: dict = field(default_factory=dict)
    backward: dict | None = None
    support: dict | None = None


def target_indices(model, target, n):
    """Targets (n,) int64 from an int, a class name, or a sequence of those; None for None/'top1' (the prediction)."""
    if target is None or (isinstance(target, str) and target == "top1"):
        return None
    if isinstance(target, (str, int, np.integer)):
        items = [target] * n
    else:
        try:
            items = list(target)
        except TypeError:
            raise InputError(f"target must be None, 'top1', a class index or name, or one per image; got {target!r}") from None
    if len(items) != n:
        raise InputError(f"got {len(items)} targets for a batch of {n} images")
    return np.array([_class_index(model, t) for t in items], dtype=np.int64)


def resolve_target(model, target, probs):
    """Targets (N,) int64 from None/'top1' (the prediction, from probs (N, K)), an int, a class name, or a sequence."""
    fixed = target_indices(model, target, len(probs))
    return probs.argmax(axis=1) if fixed is None else fixed


def _class_index(model, t):
    """A target given as an index (checked against the model's classes) or a class name."""
    if isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)):
        if not 0 <= t < model.num_classes:
            raise InputError(f"target {t} is out of range: {model.name} has {model.num_classes} classes")
        return int(t)
    if isinstance(t, str) and model.class_names is not None and t in model.class_names:
        return list(model.class_names).index(t)
    raise InputError(f"unknown target {t!r}: give a class index or one of the model's class names")


def explain(model, x, method="fbi", target=None, record_layers=False, progress=False, **options):
    """Explain the model's decision on a batch of preprocessed images.

    Parameters
    ----------
    model : fbi_ref.Model
    x : array (N, H, W, C), preprocessed as the model expects (see fbi_ref.load_image).
    method : one of METHODS: 'fbi', 'gradient', 'gradient_x_input', 'deconvnet', 'guided_backprop',
        'lrp_epsilon', 'lrp_zplus', 'gradcam', 'guided_gradcam', 'integrated_gradients', 'smoothgrad',
        'occlusion'.
    target : None or 'top1' (each image's prediction), a class index or name, or one per image.
    record_layers : for the single-traversal methods, also return every layer's backward signal and
        (for FBI) binary support, by Keras layer name.
    progress : show a progress bar for the multi-pass methods.
    **options : the method's options, e.g. FBI's k, tau, tau_mode, start, start_from, start_relu, dense_bias,
        conv_bias, unpool, unpool_min, mask_pools, mask_dense, topk_score, topk_sum, topk_layers, topk_position, topk_order,
        mask_image (docs/methods.md lists every option and its default).

    Returns
    -------
    Explanation
    """
    if not isinstance(model, Model):
        raise InputError(f"model must be an fbi_ref.Model (see fbi_ref.load_model), not {type(model).__name__}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    # bad targets and options fail here, before any work
    x = model.check_input(x)
    fixed = target_indices(model, target, len(x))
    if method in BACKPROP_METHODS:
        start, rules, used = backprop_method(model, method, options)
    else:
        if record_layers:
            raise InputError(f"record_layers is only available for {', '.join(BACKPROP_METHODS)}")
        used = other_method_options(model, method, options)
    fp = model.forward(x)
    tgt = fp.probs.argmax(axis=1) if fixed is None else fixed
    backward = support = None
    # Products that overflow (FBI's g * a on extreme inputs) are harmless where only their sign or size
    # against tau counts; what matters is checked below: the attribution must be finite.
    with np.errstate(over="ignore", invalid="ignore"):
        if method in BACKPROP_METHODS:
            result = walk(model, fp, start(fp.logits, fp.probs, tgt), rules, record=record_layers, release=True)
            attr, backward, support = result.signal, result.backward, result.support
            if method == "gradient_x_input":
                attr = attr * fp.x
        else:
            attr = _other_method(model, fp, tgt, method, used, progress)
    if not np.isfinite(attr).all():
        raise InputError(f"{method} overflowed {attr.dtype.name} on this input (values up to "
                         f"{float(np.abs(fp.x).max()):.3g}); {model.name} expects preprocessed images")
    probability = fp.probs[np.arange(len(tgt)), tgt]
    return Explanation(method, attr, heatmap(attr, HEATMAP_REDUCTION[method]), tgt, probability, fp.logits,
                       used, backward, support)


def other_method_options(model, method, options):
    """The options of a method that is not a single traversal, checked, every default filled in (no None left).

    InputError on an unknown option or a value of the wrong type or range.
    """
    defaults = {
        "gradcam": {"layer": None},
        "guided_gradcam": {"layer": None},
        "integrated_gradients": {"baseline": "zeros", "steps": 64, "batch_size": 32},
        "smoothgrad": {"base": "gradient", "samples": 50, "noise": 0.15, "seed": 0, "batch_size": 16},
        "occlusion": {"patch": None, "stride": None, "fill": 0.0, "batch_size": 32},
    }[method]
    unknown = set(options) - set(defaults)
    if unknown:
        raise InputError(f"method {method!r} takes no option {sorted(unknown)[0]!r} (its options: {', '.join(defaults)})")
    o = {**defaults, **options}
    name = f"{method}.{{}}".format
    largest_batch = min(MAX_BATCH, max(1, MAX_BATCH_BYTES // model.activation_bytes))
    if method in ("gradcam", "guided_gradcam"):
        o["layer"] = check.spatial_layer(name("layer"), o["layer"], model) or multipass.last_conv_name(model)
    elif method == "integrated_gradients":
        multipass.baseline_image(model, np.zeros((1, *model.input_shape), model.dtype), o["baseline"])
        o["steps"] = check.count(name("steps"), o["steps"], maximum=MAX_PASSES)
        o["batch_size"] = check.count(name("batch_size"), o["batch_size"], maximum=largest_batch)
    elif method == "smoothgrad":
        check.choose(name("base"), o["base"], multipass.SMOOTHGRAD_BASES)
        o["samples"] = check.count(name("samples"), o["samples"], maximum=MAX_PASSES)
        o["batch_size"] = check.count(name("batch_size"), o["batch_size"], maximum=largest_batch)
        o["noise"] = check.number(name("noise"), o["noise"], minimum=0.0)
        o["seed"] = check.count(name("seed"), o["seed"], minimum=0, maximum=2**63 - 1)
    elif method == "occlusion":
        h, w = model.input_shape[:2]
        patch = max(1, h // 8) if o["patch"] is None else check.count(name("patch"), o["patch"], maximum=min(h, w))
        o["patch"], o["stride"] = patch, max(1, patch // 2) if o["stride"] is None else check.count(name("stride"), o["stride"])
        o["fill"] = check.number(name("fill"), o["fill"])
        o["batch_size"] = check.count(name("batch_size"), o["batch_size"], maximum=largest_batch)
    return o


def _other_method(model, fp, tgt, method, o, progress):
    """Run a method that is not a single traversal with its options o; returns the attribution."""
    x = fp.x
    if method in ("gradcam", "guided_gradcam"):
        cam = multipass.gradcam(model, fp, tgt, o["layer"])  # (N, H, W)
        if method == "gradcam":
            return np.repeat(cam[..., None], x.shape[-1], axis=-1)
        start = R.start_onehot(fp.logits, fp.probs, tgt)
        guided = walk(model, fp, start, GUIDED_BACKPROP).signal  # (N, H, W, C)
        return guided * cam[..., None]
    if method == "integrated_gradients":
        return multipass.integrated_gradients(model, x, tgt, progress=progress, **o)
    if method == "smoothgrad":
        return multipass.smoothgrad(model, x, tgt, progress=progress, **o)
    return multipass.occlusion(model, x, tgt, progress=progress, **o)
