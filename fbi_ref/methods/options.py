"""The methods' options, checked before any work: each option is a record (`Option`) with its default and the
values it may take, and a wrong value is one InputError that names the option, never a silently wrong result
(a negative batch size giving zeros, NaN noise)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

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


def one_of(choices):
    """A check that accepts exactly the given values (strings, or True/False for flags), each as given."""
    def check(value, name, model, chosen):
        if all(isinstance(c, bool) for c in choices):
            flag(name, value)
        else:
            choose(name, value, dict.fromkeys(choices))
        return value
    return check


@dataclass(frozen=True)
class Option:
    """One option of a method: its name, its default, and the values it may take.

    choices: the values it may take, in the order the benchmark's selection tries them (the default first);
        () when `check` alone decides (numbers, counts, layers, arrays).
    check(value, name, model, chosen) -> the value to use: InputError (naming `name`, 'method.option') when the
        value is not allowed; `chosen` holds the method's options checked before this one. Default: one of
        `choices`.
    help: one line for `fbi-ref methods` and docs/methods.md; paper: the paper's sentence it reads, if any.
    applies(model) -> bool: whether the option can change anything on that model (None: always); the
        benchmark's selection does not try an option that cannot.
    """
    name: str
    default: object
    choices: tuple = ()
    check: Callable | None = None
    help: str = ""
    paper: str = ""
    applies: Callable | None = None

    def checked(self, value, method, model, chosen):
        """The value to use for this option of `method` (InputError if it is not allowed)."""
        check = self.check or one_of(self.choices)
        return check(value, f"{method}.{self.name}", model, chosen)
