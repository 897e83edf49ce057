"""The public entry point: `explain(model, x, method=...)` and what it returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.methods.catalog import METHODS as RECORDS, ONE_WALK, heatmap, method as method_record
from fbi_ref.methods.traversal import walk
from fbi_ref.nn.model import Model

METHODS = tuple(RECORDS)  # every method's name, in the order docs/methods.md lists them


@dataclass
class Explanation:
    """One method's explanation of a batch.

    attribution: (N, H, W, C) w.r.t. the preprocessed input; heatmap: (N, H, W), by the method's reduction
    (fbi_ref.methods.catalog); target, probability: (N,) the explained class and its softmax probability;
    logits: (N, K); options: every option used (defaults filled in); backward / support: with
    record_layers=True, the backward signal and binary support at every position (a Keras layer name's
    output, or "input").
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


def explain(model, x, method="fbi", target=None, record_layers=False, progress=False, preset=None, **options):
    """Explain the model's decision on a batch of preprocessed images.

    Parameters
    ----------
    model : fbi_ref.Model
    x : array (N, H, W, C), preprocessed as the model expects (see fbi_ref.load_image).
    method : a name in METHODS (fbi_ref.methods.catalog; `fbi-ref methods` lists them with their options).
    target : None or 'top1' (each image's prediction), a class index or name, or one per image.
    record_layers : for the one-walk methods, also return every layer's backward signal and
        (for FBI) binary support, by Keras layer name.
    progress : show a progress bar for the multi-pass methods.
    preset : FBI only: None or 'model' (the model's own defaults, `model.fbi_defaults`), or 'paper' (every
        option at the paper's reading; tau = 10 absolute on the ImageNet VGG16/VGG19, 0.05 relative on other
        models, whose scale is not VGG16's). The options given override it.
    **options : the method's options, e.g. FBI's k or tau; each method's options and their defaults are
        in docs/methods.md and `fbi-ref methods`. An unknown option is an InputError.

    Returns
    -------
    Explanation
    """
    if not isinstance(model, Model):
        raise InputError(f"model must be an fbi_ref.Model (see fbi_ref.load_model), not {type(model).__name__}")
    record = method_record(method)
    # bad inputs, targets and options fail here, before any work
    x = model.check_input(x)
    fixed = target_indices(model, target, len(x))
    if record_layers and not record.one_walk:
        raise InputError(f"record_layers is only available for {', '.join(ONE_WALK)}")
    if preset is not None:
        if record.presets is None:
            raise InputError(f"preset: {method} has no presets (FBI has: 'model', 'paper')")
        options = {**record.presets(model, preset), **options}
    used = record.checked(model, options)
    if record.one_walk:
        start, rules = record.walk(model, used)
    fp = model.forward(x)
    tgt = fp.probs.argmax(axis=1) if fixed is None else fixed
    backward = support = None
    # Products that overflow (FBI's g * a on extreme inputs) are harmless where only their sign or size
    # against tau counts; what matters is checked below: the attribution must be finite.
    with np.errstate(over="ignore", invalid="ignore"):
        if record.one_walk:
            result = walk(model, fp, start(fp.logits, fp.probs, tgt), rules, record=record_layers, release=True)
            attr, backward, support = result.signal, result.backward, result.support
            if record.times_input:
                attr = attr * fp.x
        else:
            attr = record.run(model, fp, tgt, used, progress)
    if not np.isfinite(attr).all():
        raise InputError(f"{method} overflowed {attr.dtype.name} on this input (values up to "
                         f"{float(np.abs(fp.x).max()):.3g}); {model.name} expects preprocessed images")
    probability = fp.probs[np.arange(len(tgt)), tgt]
    return Explanation(method, attr, heatmap(attr, record.reduction), tgt, probability, fp.logits,
                       used, backward, support)
