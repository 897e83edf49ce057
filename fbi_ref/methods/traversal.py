"""The one backward walk that every backprop-style method shares; methods differ only in their `Rules`.

The walk carries a signal g from the logits down to the image. g always sits on a *position* of the
forward pass: the output of a layer (by its Keras name) or "input" (the preprocessed image), and has
that position's shape. Layer by layer, from the top:

    activation rule (ReLU)  g w.r.t. the layer's output       -> w.r.t. its pre-activation
    linear rule (conv/dense) g w.r.t. the pre-activation      -> w.r.t. the layer's input
    pool rule (max-pool)     g w.r.t. the pooled output       -> w.r.t. the pool's input
    flatten / dropout        reshape / identity
    mask rule (optional)     at the input of every conv and dense layer (FBI's forward-backward mask)
    top-k rule (optional)    at the activated output of the top conv layer (or of every conv layer)

A conv layer's *activated output* is its output after its ReLU, wherever the file put the ReLU: the conv's
own output for Conv2D(activation='relu'), the output of the Activation('relu') layer right after it for
Conv2D + Activation('relu'). So a model and its unfused twin give the same walk, option for option.

The walk starts at the logits, i.e. the pre-activation of the last layer, so the final softmax is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from fbi_ref.errors import UnsupportedLayerError
from fbi_ref.nn import layers as L
from fbi_ref.nn.network import Activation, Conv2D, Dense, Dropout, Flatten, MaxPool2D


@dataclass(frozen=True)
class Rules:
    """The per-layer-type rules of one method.

    relu(g, a_out) -> g: through a ReLU, given the ReLU's output a_out.
    linear(g, layer, a_in, at_image) -> g: through a conv or dense layer (pre-activation -> input);
        at_image is True for the first layer, whose input is the image.
    pool(g, layer, a_in, switches) -> g: through a max-pool, given its input and switches.
    mask(g, a, is_image) -> (g, support): at the input of every conv/dense layer (None: no mask).
    topk(g, a) -> (g, support): at the activated output of the top conv layer, or of every conv layer
        (None: no top-k); a is that output.
    """
    relu: Callable
    linear: Callable
    pool: Callable
    mask: Optional[Callable] = None
    topk: Optional[Callable] = None
    topk_every_conv: bool = False


@dataclass
class Walk:
    """What a walk returns: the signal at the stop position, and (if recorded) every position's signal/support."""
    signal: object
    backward: Optional[dict] = None
    support: Optional[dict] = None


def top_layer_index(model):
    """The layer whose pre-activation is the logits (a trailing softmax Activation layer is skipped)."""
    last = len(model.layers) - 1
    if isinstance(model.layers[last], Activation) and last > 0:
        return last - 1
    return last


def walk(model, fp, start, rules: Rules, record=False, stop_at="input", release=False, forced=None, observe=None):
    """Carry the start signal (N, K) at the logits down to `stop_at` (a layer name or "input").

    fp is the model's ForwardPass of the same batch. With record=True, returns every position's signal
    (after the masks applied there) and every mask's binary support, keyed by position. With release=True,
    each layer's output is dropped from fp once the walk is past it (less memory; fp is used up).

    For checking another implementation (fbi_ref.reference.replay): `forced` {position: bool array} imposes
    a support instead of the one the mask or top-k rule would choose there, and observe(position, kind, g, a)
    is called before each such decision (kind 'mask' or 'topk', g the signal it applies to, a the activation).
    """
    forced = forced or {}
    top = top_layer_index(model)
    topk_at = set(topk_positions(model, rules.topk_every_conv)) if rules.topk else set()
    backward, support = ({}, {}) if record else (None, None)
    g = start  # (N, K): w.r.t. the logits, the top layer's pre-activation
    if record:
        backward[model.layers[top].name] = g
    for i in range(top, -1, -1):
        layer = model.layers[i]
        if layer.name == stop_at:
            return Walk(g, backward, support)
        a_out = fp.outputs[layer.name]
        a_in = fp.x if i == 0 else fp.outputs[model.layers[i - 1].name]
        below = "input" if i == 0 else model.layers[i - 1].name
        if layer.name in topk_at:
            g, kept = _decide(rules.topk, (g, a_out), layer.name, "topk", forced, observe)
            _record(backward, support, layer.name, g, kept)
        g = _through_layer(layer, g, a_in, a_out, fp, rules, is_top=(i == top), at_image=(i == 0))
        if rules.mask is not None and isinstance(layer, (Conv2D, Dense)):
            g, kept = _decide(rules.mask, (g, a_in, i == 0), below, "mask", forced, observe)
            _record(None, support, below, g, kept)
        _record(backward, None, below, g, None)
        if release:
            fp.outputs.pop(layer.name)
            fp.switches.pop(layer.name, None)
    if stop_at != "input":
        raise KeyError(f"no layer called {stop_at!r} below the logits of {model.name}")
    return Walk(g, backward, support)


def activated_output(model, i):
    """The position of conv layer i's output after its ReLU: its own, or that of an Activation('relu') after it."""
    layer = model.layers[i]
    after = model.layers[i + 1] if i + 1 < len(model.layers) else None
    if layer.activation == "linear" and isinstance(after, Activation) and after.activation == "relu":
        return after.name
    return layer.name


def topk_positions(model, every_conv):
    """Where FBI's top-k applies: the activated output of the top conv layer, or of every conv layer."""
    positions = [activated_output(model, i) for i, layer in enumerate(model.layers) if isinstance(layer, Conv2D)]
    return positions if every_conv else positions[-1:]


def _decide(rule, args, position, kind, forced, observe):
    """A mask or top-k decision: (signal, support) from the rule, or the support imposed by `forced`."""
    if observe is not None:
        observe(position, kind, args[0], args[1])
    g, kept = rule(*args)
    if position in forced and kept is not None:  # (no mask at the image: nothing to impose)
        kept = forced[position]
        g = args[0] * kept
    return g, kept


def _record(backward, support, name, g, kept):
    """Store a position's signal and/or support when recording (two masks at one position: their AND)."""
    if backward is not None:
        backward[name] = g
    if support is not None and kept is not None:
        support[name] = kept & support[name] if name in support else kept


def _through_layer(layer, g, a_in, a_out, fp, rules, is_top, at_image):
    """One layer's backward step: activation rule, then the layer's own rule."""
    activation = getattr(layer, "activation", "linear")
    if activation == "relu" and not is_top:
        g = rules.relu(g, a_out)
    elif activation == "softmax" and not is_top:
        raise UnsupportedLayerError(f"layer {layer.name!r}: a softmax below the logits cannot be walked back")
    if isinstance(layer, (Conv2D, Dense)):
        return rules.linear(g, layer, a_in, at_image)
    if isinstance(layer, MaxPool2D):
        return rules.pool(g, layer, a_in, fp.switches[layer.name])
    if isinstance(layer, Flatten):
        return L.flatten_adjoint(g, a_in.shape[1:])
    if isinstance(layer, (Activation, Dropout)):
        return g
    raise UnsupportedLayerError(f"layer {layer.name!r}: no backward rule for {type(layer).__name__}")
