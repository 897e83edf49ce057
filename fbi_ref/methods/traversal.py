"""The one backward walk that every backprop-style method shares; methods differ only in their `Rules`.

The walk carries a signal g from the logits down to the image. g always sits on a *position* of the
forward pass: the output of a layer (by its Keras name) or "input" (the preprocessed image), and has
that position's shape. Layer by layer, from the top:

    activation rule (ReLU)  g w.r.t. the layer's output       -> w.r.t. its pre-activation
    linear rule (conv/dense) g w.r.t. the pre-activation      -> w.r.t. the layer's input
    pool rule (max-pool)     g w.r.t. the pooled output       -> w.r.t. the pool's input
    flatten / dropout        reshape / identity
    mask rule (optional)     at the input of every conv and dense layer (FBI's forward-backward mask), and
                             optionally of every max-pool
    top-k rule (optional)    at the activated output of the top conv layer (or of every conv layer), or at
                             the output of the max-pool right after it; before or after its ReLU rule

A conv layer's *activated output* is its output after its ReLU, wherever the file put the ReLU: the conv's
own output for Conv2D(activation='relu'), the output of the Activation('relu') layer right after it for
Conv2D + Activation('relu'). So a model and its unfused twin give the same walk, option for option.

The walk starts at the logits, i.e. the pre-activation of the last layer, so the final softmax is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from fbi_ref.errors import InputError, UnsupportedLayerError
from fbi_ref.nn import layers as L
from fbi_ref.nn.network import Activation, Conv2D, Dense, Dropout, Flatten, MaxPool2D


@dataclass(frozen=True)
class Rules:
    """The per-layer-type rules of one method.

    relu(g, a_out) -> g: through a ReLU, given the ReLU's output a_out.
    linear(g, layer, a_in, at_image) -> g: through a conv or dense layer (pre-activation -> input);
        at_image is True for the first layer, whose input is the image.
    pool(g, layer, a_in, switches) -> g: through a max-pool, given its input and switches.
    mask(g, a, is_image) -> (g, support): at the input of every conv/dense layer (None: no mask); of every
        max-pool too with mask_pools, and not at the dense layers' inputs without mask_dense.
    topk(g, a) -> (g, support): at the activated output of the top conv layer, or of every conv layer
        (None: no top-k), or (topk_at_pool) at the output of the max-pool right after it; a is that output.
        With topk_after_relu it takes the signal after the position's ReLU rule (max(g, 0) at a max-pool).
    relu_top: the ReLU rule on the start signal too, before the top layer's rule.
    """
    relu: Callable
    linear: Callable
    pool: Callable
    mask: Optional[Callable] = None
    topk: Optional[Callable] = None
    topk_every_conv: bool = False
    topk_at_pool: bool = False
    topk_after_relu: bool = False
    mask_pools: bool = False
    mask_dense: bool = True
    relu_top: bool = False


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
    (after the masks applied there, before the ReLU rule there) and every mask's binary support, keyed by
    position. With release=True, each layer's output is dropped from fp once the walk is past it (less
    memory; fp is used up).

    For checking another implementation (fbi_ref.reference.replay): `forced` {position: bool array} imposes
    a support instead of the one the mask or top-k rule would choose there, and observe(position, kind, g, a)
    is called before each such decision (kind 'mask' or 'topk', g the signal it applies to, a the activation).
    """
    forced = forced or {}
    top = top_layer_index(model)
    topk_at = set(topk_positions(model, rules.topk_every_conv, rules.topk_at_pool)) if rules.topk else set()
    masked = (Conv2D,) + ((Dense,) if rules.mask_dense else ()) + ((MaxPool2D,) if rules.mask_pools else ())
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
        if layer.name in topk_at and rules.topk_after_relu:  # the ReLU rule, top-k, then the layer's own rule
            g, arrived = _relu_rule_at(layer, g, a_out, rules, is_top=(i == top)), g
            g, kept = _decide(rules.topk, (g, a_out), layer.name, "topk", forced, observe)
            _record(backward, support, layer.name, arrived * kept, kept)  # as every record: before the ReLU rule
            g = _layer_step(layer, g, a_in, fp, rules, at_image=(i == 0))
        else:
            if layer.name in topk_at:
                g, kept = _decide(rules.topk, (g, a_out), layer.name, "topk", forced, observe)
                _record(backward, support, layer.name, g, kept)
            g = _through_layer(layer, g, a_in, a_out, fp, rules, is_top=(i == top), at_image=(i == 0))
        if rules.mask is not None and isinstance(layer, masked):
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


def topk_positions(model, every_conv, at_pool=False):
    """Where FBI's top-k applies: the activated output of the top conv layer, or of every conv layer; with
    at_pool, each of these that a max-pool directly follows moves to that pool's output (InputError if none)."""
    positions = [activated_output(model, i) for i, layer in enumerate(model.layers) if isinstance(layer, Conv2D)]
    positions = positions if every_conv else positions[-1:]
    if not at_pool:
        return positions
    moved = [_pool_after(model, position) or position for position in positions]
    if moved == positions:
        which = "any conv layer" if every_conv else f"the top conv layer ({', '.join(positions) or 'none'})"
        raise InputError(f"topk_position='pool': no max-pool directly follows {which} of {model.name}")
    return moved


def _pool_after(model, position):
    """The name of the max-pool layer right after a position, or None."""
    i = model.index(position)
    after = model.layers[i + 1] if i + 1 < len(model.layers) else None
    return after.name if isinstance(after, MaxPool2D) else None


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


def _relu_rule_at(layer, g, a_out, rules, is_top):
    """The ReLU rule at a top-k position: the layer's own, or at a max-pool's output max(g, 0), the ReLU rule
    of the conv below taken before un-pooling (for a >= 0 and non-overlapping windows the two commute)."""
    if isinstance(layer, MaxPool2D):
        return rules.relu(g, a_out)
    return _activation_step(layer, g, a_out, rules, is_top)


def _through_layer(layer, g, a_in, a_out, fp, rules, is_top, at_image):
    """One layer's backward step: activation rule, then the layer's own rule."""
    return _layer_step(layer, _activation_step(layer, g, a_out, rules, is_top), a_in, fp, rules, at_image)


def _activation_step(layer, g, a_out, rules, is_top):
    """g w.r.t. a layer's output -> w.r.t. its pre-activation: the ReLU rule, if the layer has a ReLU."""
    if is_top:  # the start signal is already w.r.t. the logits; the softmax is never walked back
        return rules.relu(g, a_out) if rules.relu_top else g
    activation = getattr(layer, "activation", "linear")
    if activation == "relu":
        return rules.relu(g, a_out)
    if activation == "softmax":
        raise UnsupportedLayerError(f"layer {layer.name!r}: a softmax below the logits cannot be walked back")
    return g


def _layer_step(layer, g, a_in, fp, rules, at_image):
    """g w.r.t. a layer's pre-activation -> w.r.t. its input: the layer's own rule."""
    if isinstance(layer, (Conv2D, Dense)):
        return rules.linear(g, layer, a_in, at_image)
    if isinstance(layer, MaxPool2D):
        return rules.pool(g, layer, a_in, fp.switches[layer.name])
    if isinstance(layer, Flatten):
        return L.flatten_adjoint(g, a_in.shape[1:])
    if isinstance(layer, (Activation, Dropout)):
        return g
    raise UnsupportedLayerError(f"layer {layer.name!r}: no backward rule for {type(layer).__name__}")
