"""Checking the methods' options before any work: each option has a type and a range, and a wrong value is one
InputError that names the option, never a silently wrong result (a negative batch size giving zeros, NaN noise)."""
import math

import numpy as np

from fbi_ref.errors import InputError


def count(name, value, minimum=1, maximum=None):
    """An int in [minimum, maximum] (bools are not counts)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        top = "" if maximum is None else f" and at most {maximum}"
        raise InputError(f"{name} must be at least {minimum}{top}, got {value}")
    return int(value)


def number(name, value, minimum=None, strictly_positive=False, finite=True):
    """A real number (int or float, not NaN; finite unless finite=False), at least `minimum`, or > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise InputError(f"{name} must be a {'finite ' if finite else ''}number, got {value}")
    if strictly_positive and not value > 0:
        raise InputError(f"{name} must be greater than 0, got {value}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}")
    return value


def choose(name, value, table):
    """table[value], or an InputError listing the choices."""
    if not isinstance(value, (str, bool, int, float)) or value not in table:
        raise InputError(f"{name} must be one of {', '.join(map(repr, table))}; got {value!r}")
    return table[value]


def flag(name, value):
    """A bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def spatial_layer(name, value, model):
    """The name of a layer with an (H, W, C) output (Grad-CAM's layer), or None for the model's last conv layer."""
    if value is None:
        return None
    spatial = [layer.name for layer in model.layers if len(model.output_shape(layer.name)) == 3]
    if not isinstance(value, str) or value not in spatial:
        shown = ", ".join(spatial[-4:])
        raise InputError(f"{name} must name a layer with an (H, W, C) output (e.g. {shown}), got {value!r}")
    return value
