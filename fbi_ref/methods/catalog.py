"""Every method, declared once: its options, its heat-map reduction, its display name, and how it runs.

`explain`, the command line's --option checking and `fbi-ref methods`, the reference's meta, the benchmark's
selection grid and the figures all read these records; a model's `fbi_defaults` overrides FBI's values.
A method is either one walk (`walk(model, options) -> (start signal, Rules)`, see traversal.py) or runs more
than one walk or forward pass (`run(model, fp, target, options, progress) -> attribution (N, H, W, C)`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.methods import fbi, multipass, tables
from fbi_ref.methods import options as check
from fbi_ref.methods.options import Option

# Upper bounds of the multi-pass methods' counts: more walks than MAX_PASSES per image would run for days on
# VGG16; a batch may take at most MAX_BATCH_BYTES of activations (a batch of 32 VGG16 images at 224 x 224 takes
# 2 GB) and hold at most MAX_BATCH images.
MAX_PASSES = 10_000
MAX_BATCH = 1024
MAX_BATCH_BYTES = 8 * 2**30

REDUCTIONS = ("max_abs", "sum", "mean")  # how an attribution (N, H, W, C) becomes a heat map (N, H, W)


@dataclass(frozen=True)
class Method:
    """One explanation method: what it is called and shown as, its options, and how it runs."""
    name: str
    label: str            # its name in figures and tables
    reduction: str        # its heat map: 'max_abs' (max over channels of |a|), 'sum' (signed sum), 'mean'
    display: str          # how figures draw it: 'image' (a gradient image), 'signed' (a diverging map), 'overlay'
    options: tuple = ()   # Option records, in the order explain fills them in
    walk: Callable | None = None  # one walk: walk(model, options) -> (start signal, Rules)
    run: Callable | None = None   # several: run(model, fp, target, options, progress) -> attribution
    times_input: bool = False     # the walk's signal times the input (gradient x input)
    model_defaults: Callable | None = None  # model -> {option: value} overriding the defaults (FBI's, per model)
    presets: Callable | None = None  # (model, name) -> {option: value}: named option sets (FBI's 'paper')
    summary: str = ""

    @property
    def one_walk(self):
        """True when the method is one backward walk (its walk can be recorded position by position)."""
        return self.walk is not None

    @property
    def defaults(self):
        """{option: default}."""
        return {option.name: option.default for option in self.options}

    def option(self, name):
        """The Option record called `name` (KeyError if the method has none)."""
        found = [option for option in self.options if option.name == name]
        if not found:
            raise KeyError(f"method {self.name!r} has no option {name!r}")
        return found[0]

    def checked(self, model, given):
        """Every option of this method for `model`: the given ones and the defaults (the model's own first),
        each checked; InputError for an unknown option or a value that is not allowed."""
        names = [option.name for option in self.options]
        own = self.model_defaults(model) if self.model_defaults else {}
        for source, values in (("model " + model.name, own), ("", given)):
            unknown = [name for name in values if name not in names]
            if unknown:
                where = f" (the {source}'s defaults)" if source else ""
                raise InputError(f"method {self.name!r} takes no option {sorted(unknown)[0]!r}{where} "
                                 f"(its options: {', '.join(names) or 'none'})")
        values, chosen = {**self.defaults, **own, **given}, {}
        for option in self.options:
            chosen[option.name] = option.checked(values[option.name], self.name, model, chosen)
        return chosen


def heatmap(attribution, reduction):
    """(N, H, W, C) -> (N, H, W): 'max_abs' (max over channels of |a|), 'sum' (signed sum), 'mean'."""
    if reduction == "max_abs":
        return np.abs(attribution).max(axis=-1)
    if reduction == "sum":
        return attribution.sum(axis=-1)
    if reduction == "mean":
        return attribution.mean(axis=-1)
    raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")


# ---------------------------------------------------------------- the checks that need the model

def largest_batch(model):
    """The most images of this model one batch may hold (MAX_BATCH, and MAX_BATCH_BYTES of activations)."""
    return min(MAX_BATCH, max(1, MAX_BATCH_BYTES // model.activation_bytes))


def _passes(value, name, model, chosen):
    """A count of walks or forward passes per image."""
    return check.count(name, value, maximum=MAX_PASSES)


def _batch_size(value, name, model, chosen):
    """Images (or inputs) per forward pass."""
    return check.count(name, value, maximum=largest_batch(model))


def _cam_layer(value, name, model, chosen):
    """A layer with an (H, W, C) output; None: the last Conv2D."""
    return check.spatial_layer(name, value, model) or multipass.last_conv_name(model)


def _baseline(value, name, model, chosen):
    """'zeros', 'black' or an array that broadcasts to the input (kept as given)."""
    multipass.baseline_image(model, np.zeros((1, *model.input_shape), model.dtype), value)
    return value


def _patch(value, name, model, chosen):
    """The occluding patch's side; None: 1/8 of the input's height."""
    h, w = model.input_shape[:2]
    return max(1, h // 8) if value is None else check.count(name, value, maximum=min(h, w))


def _stride(value, name, model, chosen):
    """The patches' step; None: half the patch."""
    return max(1, chosen["patch"] // 2) if value is None else check.count(name, value)


def _positive(value, name, model, chosen):
    return check.number(name, value, strictly_positive=True)


def _non_negative(value, name, model, chosen):
    return check.number(name, value, minimum=0.0)


def _real(value, name, model, chosen):
    return check.number(name, value)


def _seed(value, name, model, chosen):
    return check.count(name, value, minimum=0, maximum=2**63 - 1)


# ---------------------------------------------------------------- how the several-pass methods run

def _gradcam(model, fp, target, options, progress):
    """The Grad-CAM map (N, H, W) repeated over the input's channels."""
    cam = multipass.gradcam(model, fp, target, options["layer"])  # (N, H, W)
    return np.repeat(cam[..., None], fp.x.shape[-1], axis=-1)


def _guided_gradcam(model, fp, target, options, progress):
    """Guided backprop times the Grad-CAM map."""
    cam = multipass.gradcam(model, fp, target, options["layer"])  # (N, H, W)
    return multipass.target_walk(model, fp, target, tables.GUIDED_BACKPROP) * cam[..., None]


def _integrated_gradients(model, fp, target, options, progress):
    return multipass.integrated_gradients(model, fp.x, target, progress=progress, **options)


def _smoothgrad(model, fp, target, options, progress):
    return multipass.smoothgrad(model, fp.x, target, progress=progress, **options)


def _occlusion(model, fp, target, options, progress):
    return multipass.occlusion(model, fp.x, target, progress=progress, **options)


OUTPUT = Option("output", "logit", choices=("logit", "probability", "log_probability"),
                help="the gradient of the target's logit, probability or log-probability")
CAM_LAYER = Option("layer", None, check=_cam_layer, help="the layer of the map (default: the last Conv2D)")
BATCH_SIZE = Option("batch_size", 32, check=_batch_size, help="inputs per forward pass")

METHODS = {method.name: method for method in (
    Method("fbi", "FBI", "max_abs", "image", fbi.OPTIONS, walk=fbi.rules,
           model_defaults=lambda model: model.fbi_defaults, presets=fbi.preset_options,
           summary="Forward-Backward Interpretability: DeconvNet's walk with the forward-backward mask and top-k maps"),
    Method("gradient", "Gradient", "max_abs", "image", (OUTPUT,), walk=tables.gradient,
           summary="the gradient of the target at the input (Simonyan et al. 2014)"),
    Method("gradient_x_input", "Gradient × input", "sum", "signed", (OUTPUT,), walk=tables.gradient,
           times_input=True, summary="the gradient times the input"),
    Method("deconvnet", "DeconvNet", "max_abs", "image", walk=tables.deconvnet,
           summary="the ReLU of the backward signal at every ReLU (Zeiler & Fergus 2014)"),
    Method("guided_backprop", "Guided backprop", "max_abs", "image", walk=tables.guided_backprop,
           summary="the gradient where the backward signal is positive too (Springenberg et al. 2014)"),
    Method("lrp_epsilon", "LRP-ε", "sum", "signed",
           (Option("epsilon", 1e-6, check=_positive, help="the stabiliser of z + ε sign(z)"),),
           walk=tables.lrp_epsilon, summary="layer-wise relevance propagation, ε rule (Bach et al. 2015)"),
    Method("lrp_zplus", "LRP-z⁺", "sum", "signed", walk=tables.lrp_zplus,
           summary="layer-wise relevance propagation, z⁺ rule, z^B at the image (Montavon et al. 2017)"),
    Method("gradcam", "Grad-CAM", "mean", "overlay", (CAM_LAYER,), run=_gradcam,
           summary="the gradient-weighted activation map of a conv layer, upsampled (Selvaraju et al. 2017)"),
    Method("guided_gradcam", "Guided Grad-CAM", "max_abs", "image", (CAM_LAYER,), run=_guided_gradcam,
           summary="guided backprop times the Grad-CAM map"),
    Method("integrated_gradients", "Integrated gradients", "sum", "signed",
           (Option("baseline", "zeros", check=_baseline, help="'zeros', 'black' (preprocessed) or an array"),
            Option("steps", 64, check=_passes, help="midpoint-rule steps from the baseline to the input"),
            BATCH_SIZE), run=_integrated_gradients,
           summary="the path integral of the gradient from a baseline (Sundararajan et al. 2017)"),
    Method("smoothgrad", "SmoothGrad", "max_abs", "image",
           (Option("base", "gradient", choices=tuple(multipass.SMOOTHGRAD_BASES), help="the method averaged"),
            Option("samples", 50, check=_passes, help="noisy copies per image"),
            Option("noise", 0.15, check=_non_negative, help="σ as a fraction of the image's value range"),
            Option("seed", 0, check=_seed, help="the noise's random seed (the same draws for every image)"),
            Option("batch_size", 16, check=_batch_size, help="inputs per forward pass")), run=_smoothgrad,
           summary="the base method averaged over noisy copies of the input (Smilkov et al. 2017)"),
    Method("occlusion", "Occlusion", "mean", "signed",
           (Option("patch", None, check=_patch, help="the occluding patch's side (default: the input side / 8)"),
            Option("stride", None, check=_stride, help="the patches' step (default: half the patch)"),
            Option("fill", 0.0, check=_real, help="the value the patch is filled with (0: the mean image)"),
            BATCH_SIZE), run=_occlusion,
           summary="the drop of the target logit when a patch is covered (Zeiler & Fergus 2014)"),
)}
ONE_WALK = tuple(name for name, method in METHODS.items() if method.one_walk)


def method(name):
    """The record of the method called `name` (InputError naming the known ones otherwise)."""
    if not isinstance(name, str) or name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def walk_rules(model, name, options):
    """(start signal, Rules, every option used) of a one-walk method on `model`: checked before any work."""
    record = method(name)
    used = record.checked(model, options)
    start, rules = record.walk(model, used)
    return start, rules, used
