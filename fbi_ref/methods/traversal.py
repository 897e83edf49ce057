"""The one backward walk that every backprop-style method shares; methods differ only in their `Rules`.

The walk carries a signal g from the logits down to the image. g always sits on a *position* of the forward
pass: the output of a layer (by its Keras name) or "input" (the preprocessed image), and has that position's
shape. The paper's two passes: the forward pass keeps every position's activation a (nn/model.py); the
backward pass goes layer by layer from the top, and at each layer

    hooks (optional)   at the layer's output position: each hook(g, a) -> (g, kept) in turn, a the forward
                       value there (FBI's forward-backward mask and top-k; recorded as the position's signal
                       and support)
    activation rule    g w.r.t. the layer's output -> w.r.t. its pre-activation: the method's ReLU rule where the
                       layer has a ReLU (never at the top layer: the start is already w.r.t. its pre-activation)
    steps (optional)   on g w.r.t. the pre-activation, for that layer (FBI's ReLU rule on the start signal, or
                       before un-pooling where its top-k scored after the ReLU rule); not recorded
    layer rule         g w.r.t. the pre-activation -> w.r.t. the layer's input: the method's rule for the layer's
                       kind ('linear': conv, dense and affine; 'pool': max-pool, global max-pool; 'average':
                       average pooling, global average pooling), or the layer's own adjoint (flatten, dropout, a
                       stand-alone activation)

then the hooks at "input". The walk starts at the logits, the pre-activation of the top layer, so the final
softmax is never walked back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from fbi_ref.errors import UnsupportedLayerError
from fbi_ref.nn.network import Activation


@dataclass(frozen=True, eq=False)
class Rules:
    """One method's rules: what the walk does at each kind of layer, and at named positions.

    relu(g, a_out) -> g: through a ReLU, given the ReLU's output a_out.
    linear(g, layer, a_in, at_image) -> g: through a conv or dense layer (pre-activation -> input); at_image is
        True for the first layer, whose input is the image.
    pool(g, layer, a_in, switches) -> g: through a max-pool, given its input and switches.
    average(g, layer, a_in) -> g: through an average pool (default: its adjoint, the exact gradient).
    hooks: {position: (hook, ...)}: at that position, each hook(g, a) -> (g, kept) in turn, kept the binary
        support it keeps (or None).
    steps: {layer name: (step, ...)}: each step(g) -> g in turn on g w.r.t. that layer's pre-activation (its
        output, for a layer without activation), before its own rule.
    """
    relu: Callable
    linear: Callable
    pool: Callable
    average: Callable = field(default=lambda g, layer, a_in: layer.adjoint(g, a_in))
    hooks: Mapping = field(default_factory=dict)
    steps: Mapping = field(default_factory=dict)


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


def walk(model, fp, start, rules: Rules, record=False, stop_at="input", release=False, start_at=None):
    """Carry the start signal at the logits (N, K) down to `stop_at` (a layer name or "input"): the signal
    arriving there, before the hooks at that position (at "input": after them, the attribution).

    fp is the model's ForwardPass of the same batch. With record=True, returns every position's signal (after
    the hooks there, before the ReLU rule there) and every hook's binary support (their AND where a position has
    several), keyed by position. With release=True, each layer's output is dropped from fp once the walk is
    past it (less memory; fp is used up). start_at: the layer whose pre-activation `start` is w.r.t., if not the
    top layer's (a walk from inside the network).
    """
    top = top_layer_index(model) if start_at is None else model.index(start_at)
    positions = ["input"] + [layer.name for layer in model.layers]  # positions[i]: the input of layer i
    backward, support = ({}, {}) if record else (None, None)
    g = start  # w.r.t. the top layer's pre-activation
    for i in range(top, -1, -1):
        layer = model.layers[i]
        a_out = fp.outputs[layer.name]
        if layer.name == stop_at:
            return Walk(g, backward, support)
        g = _hooks(layer.name, g, a_out, rules, backward, support)
        if i < top:
            g = _activation_rule(layer, g, a_out, rules)
        for step in rules.steps.get(layer.name, ()):
            g = step(g)
        g = _layer_rule(layer, g, fp.at(positions[i]), fp, rules, at_image=(i == 0))
        if release:
            fp.outputs.pop(layer.name)
            fp.switches.pop(layer.name, None)
    if stop_at != "input":
        raise KeyError(f"no layer called {stop_at!r} below the logits of {model.name}")
    return Walk(_hooks("input", g, fp.x, rules, backward, support), backward, support)


def _hooks(position, g, a, rules, backward, support):
    """The hooks at a position, in turn; the signal and support recorded there."""
    kept = None
    for hook in rules.hooks.get(position, ()):
        g, decided = hook(g, a)
        if decided is not None:
            kept = decided if kept is None else decided & kept
    if backward is not None:
        backward[position] = g
    if support is not None and kept is not None:
        support[position] = kept
    return g


def _activation_rule(layer, g, a_out, rules):
    """g w.r.t. a layer's output -> w.r.t. its pre-activation: the ReLU rule, if the layer has a ReLU."""
    activation = getattr(layer, "activation", "linear")
    if activation == "relu":
        return rules.relu(g, a_out)
    if activation == "softmax":
        raise UnsupportedLayerError(f"layer {layer.name!r}: a softmax below the logits cannot be walked back")
    return g


def _layer_rule(layer, g, a_in, fp, rules, at_image):
    """g w.r.t. a layer's pre-activation -> w.r.t. its input: the method's rule for the layer's kind."""
    if layer.kind == "linear":
        return rules.linear(g, layer, a_in, at_image)
    if layer.kind == "pool":
        return rules.pool(g, layer, a_in, fp.switches[layer.name])
    if layer.kind == "average":
        return rules.average(g, layer, a_in)
    return layer.adjoint(g, a_in, fp.switches.get(layer.name))
