"""Near ties: the decisions another implementation may take differently, and the reference replayed with them.

Three decisions in the methods are discontinuous: which cell of a max-pool window wins (the switch), whether
FBI's mask keeps an entry (g * a > tau), and which feature maps FBI's top-k keeps. Where the reference's own
values put a decision within float rounding of the other way (two window values equal up to the tolerance, a
product within it of tau, a map's score within it of the k-th), a correct float32 port can decide otherwise,
and everything downstream of that decision then differs: far more than rounding. So instead of loosening the
tolerance, `compare` asks the port which way it went, checks that every decision it took differently is such
a near tie in the reference, and replays the reference with the port's decisions there. A decision taken
differently where the reference is clear (or, for switches, against the documented first-maximum rule on the
port's own activations) is never accepted: it is a bug, and the decision's own key fails.

The port's decisions, in its own file (NHWC names; NCHW is transposed like everything else):
    switch/<pool>                         its winners on x; derived from its act/<pool input> if absent
    fbi/support/<position>                FBI's masks and top-k selections
    integrated_gradients/switch/<pool>    (N, steps, ...) its winners on each interpolated input
    smoothgrad/switch/<pool>              (N, samples, ...) its winners on each noisy input
The inputs of integrated gradients and SmoothGrad hold one more kind of near decision that no file describes:
ReLU units whose pre-activation is within rounding of 0. For each such unit the exact effect of the other
deciding its gate the other way is computed (a walk from the unit down to the input), and the effects that the
difference between the two attributions shows are applied to the reference, largest first
(`explain_gate_flips`); whatever difference remains is compared with the tolerance, as everywhere.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from fbi_ref.methods import multipass
from fbi_ref.methods import rules as R
from fbi_ref.methods.catalog import method as method_record, walk_rules
from fbi_ref.methods.fbi import DEFAULTS as FBI_DEFAULTS
from fbi_ref.methods.tables import GRADIENT
from fbi_ref.methods.traversal import walk
from fbi_ref.nn.network import MaxPool2D
from fbi_ref.nn.pooling import maxpool_forward, pick_switches, window_gaps
from fbi_ref.reference.build import near_ties as near_ties_of, read_meta

SWITCH_ROUTED = ("gradient", "gradient_x_input", "deconvnet", "guided_backprop", "lrp_epsilon", "lrp_zplus",
                 "gradcam", "guided_gradcam")


@dataclass
class Replay:
    """What the replay found: arrays to compare against instead of the reference's, and notes per key."""
    expected: dict = field(default_factory=dict)   # key -> array the port should have, given its near-tie choices
    accepted: dict = field(default_factory=dict)   # decision key -> how many near-tie decisions were taken from the port
    refused: dict = field(default_factory=dict)    # decision key -> why some decisions were not accepted
    ties: dict = field(default_factory=dict)       # decision key -> (exact ties won by another cell, exact ties),
                                                   # where the other's values are unknown (see later_at_ties)
    hints: dict = field(default_factory=dict)      # key (or prefix*; '*': every key after the forward pass) ->
                                                   # what the other file could add, or why nothing was taken


def first_max(a, layer):
    """The switches (N, Ho, Wo, C) of a max-pool over a (N, H, W, C) by the documented rule (first maximum)."""
    return maxpool_forward(np.ascontiguousarray(a), layer.pool_size, layer.strides, layer.padding)[1]


def rounding(model, fp, their_inputs, tol):
    """{pool: how far apart two values of its input may be and still be swapped by the other implementation}:
    twice the other's largest error on that input (its act/ array), or tol x max|input| without it; -inf when
    that input itself differs beyond the tolerance."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, MaxPool2D):
            a = fp.input_of(model, layer.name)
            theirs = their_inputs.get(layer.name)
            bound = tol * (float(np.abs(a).max()) or 1.0)  # never more than the tolerance allows
            if theirs is not None and theirs.shape == a.shape:
                error = float(np.abs(theirs.astype(np.float64) - a).max())
                # an input that itself differs beyond the tolerance explains no winner: accept none
                bound = -np.inf if error > bound else min(bound, 2 * error + 1e-12 * bound)
            out[layer.name] = bound
    return out


def exact_ties(a, layer):
    """The max-pool windows of a (N, H, W, C) whose maximum two cells or more hold exactly: (N, Ho, Wo, C) bool."""
    return window_gaps(a, layer.pool_size, layer.strides, layer.padding)[0] == 0


def tie_break_rates(model, fp, their_inputs):
    """{pool: the share of the reference's exact ties on x (windows whose maximum is held by two cells or more)
    where the other's own values have another first maximum; 0 when its values are not in its file}."""
    out = {}
    for layer in model.layers:
        if isinstance(layer, MaxPool2D):
            theirs = their_inputs.get(layer.name)
            a = fp.input_of(model, layer.name)
            tied = exact_ties(a, layer)
            if theirs is None or theirs.shape != a.shape or not tied.any():
                out[layer.name] = 0.0
                continue
            out[layer.name] = float((tied & (first_max(theirs, layer) != fp.switches[layer.name])).sum() / tied.sum())
    return out


def later_at_ties(deviations, ties, rate):
    """True when an implementation took another cell than the first at more exact ties of the reference than its
    own rounding explains: `deviations` of `ties` windows, against 5 % of them or four times the share `rate`
    its values showed on x, whichever is larger, plus 10 windows. (A correct float32 port breaks under 1 % of
    them: tests/test_validation.py; a last-maximum rule takes nearly all of them.)"""
    return deviations > max(0.05, 4 * rate) * ties + 10


def switch_choices(model, fp, theirs, their_inputs, eps, key_prefix="switch/"):
    """Accepted switches per pool: {pool: patched switches}, counts and refusals by decision key, and
    {pool: (winners other than the first maximum at exact ties, exact ties)} where the port's values are unknown.

    theirs: {pool: the port's switches or None}; their_inputs: {pool: the port's activations at the pool's
    input or None} (to derive switches, or to check theirs against the documented rule); eps: {pool: the
    largest gap between two window values that rounding can swap} (see `rounding`).

    A winner other than the reference's is accepted when the reference's values at the two are within eps and,
    if the port's own values are in its file, it is the first maximum of those values. If they are not, the
    winners it takes at exact ties of the reference are counted for `later_at_ties` to judge together.
    """
    patched, accepted, refused, ties = {}, {}, {}, {}
    for layer in model.layers:
        if not isinstance(layer, MaxPool2D) or layer.name not in fp.switches:
            continue
        ours = fp.switches[layer.name]
        a = fp.input_of(model, layer.name)  # the reference's pool input
        own = first_max(their_inputs[layer.name], layer) if their_inputs.get(layer.name) is not None else None
        chosen = theirs.get(layer.name)
        if chosen is None:
            chosen = own
        if chosen is None or chosen.shape != ours.shape:
            continue
        differ = chosen != ours
        if own is None:
            tied = exact_ties(a, layer)
            ties[layer.name] = (int((differ & tied).sum()), int(tied.sum()))
        if not differ.any():
            continue
        gap = pick_switches(a, ours) - pick_switches(a, np.where(differ, chosen, ours))  # >= 0
        near = gap <= eps[layer.name]
        consistent = (chosen == own) if own is not None else np.ones_like(differ)
        ok = differ & near & consistent
        key = key_prefix + layer.name
        if (differ & ~ok).any():
            bad = int((differ & ~ok).sum())
            refused[key] = (f"{bad} window{'s' if bad > 1 else ''} choose another winner where the reference has a "
                            f"clear maximum" if (differ & ~near).any() else
                            f"{bad} winner{'s' if bad > 1 else ''} against the first-maximum rule on the other's own "
                            f"activations")
        if ok.any():
            accepted[key] = int(ok.sum())
            patched[layer.name] = np.where(ok, chosen, ours)
    return patched, accepted, refused, ties


def tie_refusals(ties, rates, key_prefix):
    """{decision key: why} for the pools where `later_at_ties` finds another rule than the first maximum."""
    return {key_prefix + name: (f"{d} of the reference's {t} exact ties (equal window maxima) won by another cell "
                                f"than the first, more than the other's rounding explains (on x its values break "
                                f"{rates[name]:.2%} of them): the rule is the first maximum")
            for name, (d, t) in ties.items() if later_at_ties(d, t, rates[name])}


def gate_choices(model, fp, theirs, result, tol):
    """{layer: its output with the other's ReLU decisions where the two differ near 0}: a unit the reference
    keeps at a tiny positive value and the other zeroes (or the reverse), both within twice the other's largest
    error on that output (and within the tolerance), takes the other's value, so that the replayed walks pass or
    block it as the other did."""
    gates = {}
    for layer in model.layers:
        mine, other = fp.outputs[layer.name], theirs.get(f"act/{layer.name}")
        if getattr(layer, "activation", None) != "relu" or other is None or other.shape != mine.shape:
            continue
        differ = (mine > 0) != (other > 0)
        if not differ.any():
            continue
        error, bound = float(np.abs(other.astype(np.float64) - mine).max()), tol * (float(np.abs(mine).max()) or 1.0)
        if error > bound:  # the output itself differs: nothing to take from it
            continue
        near = differ & (np.maximum(mine, other) <= 2 * error)
        if near.any():
            gates[layer.name] = np.where(near, other, mine).astype(mine.dtype)
            result.accepted[f"act/{layer.name}"] = int(near.sum())
    return gates


def replay(model, ref, theirs, tol=1e-4):
    """The reference's arrays recomputed with the port's near-tie decisions, where it took any.

    model: the reference's model; ref: {key: array} of the reference (NHWC); theirs: the port's arrays,
    already in NHWC; tol: the scaled tolerance that defines a near tie. Returns a Replay.
    """
    meta_methods = _methods(ref)
    fp = model.forward(ref["x"])
    target = np.asarray(ref["target"])
    pools = [layer.name for layer in model.layers if isinstance(layer, MaxPool2D)]
    inputs = {name: model.input_position(name) for name in pools}
    their_switches = {name: theirs.get(f"switch/{name}") for name in pools}
    their_inputs = {name: theirs.get(f"act/{inputs[name]}") if inputs[name] != "input" else theirs.get("x")
                    for name in pools}
    result = Replay()
    blind = [name for name in pools if their_switches[name] is None and their_inputs[name] is None]
    if blind:
        result.hints["*"] = (f"the other file holds neither switch/<pool> nor the pool's input for {', '.join(blind)}:"
                             f" its max-pool winners at near ties cannot be replayed (write switch/<pool>)")
    eps = rounding(model, fp, their_inputs, tol)
    rates = tie_break_rates(model, fp, their_inputs)
    patched, result.accepted, result.refused, ties = switch_choices(model, fp, their_switches, their_inputs, eps)
    result.refused.update(tie_refusals(ties, rates, "switch/"))
    result.ties.update({f"switch/{name}": counts for name, counts in ties.items()})
    result.expected.update({f"switch/{name}": switches for name, switches in patched.items()})
    gates = gate_choices(model, fp, theirs, result, tol)
    routed = dataclasses.replace(fp, switches={**fp.switches, **patched}, outputs={**fp.outputs, **gates})
    if patched or gates:
        for method in [m for m in SWITCH_ROUTED if m in meta_methods]:
            result.expected.update(_single(model, routed, fp, target, method, meta_methods[method]))
    # switches and gates on x were judged position by position; FBI's decisions and the many inputs depend on
    # the whole forward pass: when it differs, none is taken from the other
    broken = _forward_differs(fp, theirs, tol)
    if broken:
        why = f"no near-tie decision taken: the other's forward pass differs first at {broken}"
        result.hints.update({prefix: why for prefix in ("fbi/*", "attr/fbi*", "attr/integrated_gradients*",
                                                        "attr/smoothgrad*")})
    if "fbi" in meta_methods:
        own = {} if broken else their_forward(fp, theirs)
        walked = dataclasses.replace(routed, x=own.pop("input", routed.x), outputs={**routed.outputs, **own})
        _fbi(model, walked, target, meta_methods["fbi"], {} if broken else theirs, tol, result,
             rerun=bool(patched or gates or own))
    act_error = {layer.name: _largest_error(fp.outputs[layer.name], theirs.get(f"act/{layer.name}"))
                 for layer in model.layers}
    for method in ("integrated_gradients", "smoothgrad"):
        if method in meta_methods and f"attr/{method}" in theirs and not broken:
            _many_inputs(model, fp, target, method, meta_methods[method], theirs, eps, rates, tol, act_error, result)
    return result


def their_forward(fp, theirs):
    """{layer: the other's activation, 'input': its x} (in the reference's dtype) where it holds other values than
    the reference's. FBI's walk reads forward values (the products g * a, un-pooling's min(a_p, g)), and with the
    contrast start an image's backward signal can be 1e-4 of its activations, so a forward value copied into the
    walk carries a rounding error that is tiny for the forward pass and large for the walk. Replayed on the
    other's own forward values (called only when every act/ key of it passes), the walk is judged for what it adds."""
    out = {}
    for position, mine in [("input", fp.x), *fp.outputs.items()]:
        their = theirs.get("x" if position == "input" else f"act/{position}")
        if their is not None and their.shape == mine.shape and their.dtype.kind == "f":
            their = np.asarray(their, dtype=mine.dtype)
            if not np.array_equal(their, mine):  # the same values: the stored walk is the one to compare with
                out[position] = their
    return out


def _forward_differs(fp, theirs, tol):
    """The first act/ key (or x or logits) of the other file that differs from the forward pass beyond tol x
    max|ref|, or None."""
    arrays = {"x": fp.x, **{f"act/{name}": a for name, a in fp.outputs.items()}, "logits": fp.logits}
    for key, mine in arrays.items():
        their = theirs.get(key)
        if their is not None and their.shape == mine.shape and \
                not _largest_error(mine, their) <= tol * (float(np.abs(mine).max()) or 1.0):
            return key
    return None


def _largest_error(mine, theirs):
    """max |theirs - mine| (0 when theirs is missing or of another shape)."""
    if theirs is None or theirs.shape != mine.shape:
        return 0.0
    return float(np.abs(theirs.astype(np.float64) - mine).max())


def _methods(ref):
    """{method: options} from the reference's meta."""
    return read_meta(ref["meta"], getattr(ref, "name", "the reference")).get("methods", {})


def _options(options):
    """Options from meta back to Python values ('-inf' and 'inf' were written as text)."""
    return {k: (float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v) for k, v in options.items()}


def _single(model, routed, fp, target, method, options):
    """A switch-routed method recomputed with the patched switches: {key: array} as the reference stores them."""
    options = _options(options)
    if method in ("gradcam", "guided_gradcam"):
        weights, cam, up = multipass.gradcam_parts(model, fp, target, options["layer"], routed.switches)
        if method == "gradcam":
            return {"gradcam/weights": weights, "gradcam/map": cam,
                    "attr/gradcam": np.repeat(up[..., None], fp.x.shape[-1], axis=-1)}
        guided = _walk(model, routed, target, "guided_backprop", {})[1]
        return {"attr/guided_gradcam": guided * up[..., None]}
    backward, signal = _walk(model, routed, target, method, options)
    if method_record(method).times_input:  # its backward signals are the gradient's: only the product is stored
        return {f"attr/{method}": signal * fp.x}
    return {**{f"{method}/backward/{k}": v for k, v in backward.items()}, f"attr/{method}": signal}


def _walk(model, fp, target, method, options):
    """(recorded backward signals, attribution) of a single-walk method on a forward pass."""
    start, rules, _ = walk_rules(model, method, options)
    w = walk(model, fp, start(fp.logits, fp.probs, target), rules, record=True)
    return w.backward, w.signal


def _fbi(model, routed, target, options, theirs, tol, result, rerun):
    """FBI replayed with the port's mask and top-k decisions where the reference's are within `tol` of flipping.

    A position may hold two decisions (a mask and the top-k); the file holds their AND, so they are judged
    together: an entry may differ where either decision is near. Positions are judged from the top down,
    the walk re-run after each position whose decisions are taken from the port (the signal below changes).
    """
    options = {**FBI_DEFAULTS, **_options(options)}  # a file written before an option existed had its default
    start, rules, _ = walk_rules(model, "fbi", options)
    signal = start(routed.logits, routed.probs, target)
    forced, judged = {}, set()
    while True:
        seen = {}  # position -> (our support: the AND of its decisions, near: the OR), in walk order
        detail = {}  # position -> {kind: (our support, how far from its threshold)}
        hooks = {position: tuple(_replayed_decision(position, decision, options, tol, seen, forced, detail)
                                 for decision in decisions) for position, decisions in rules.hooks.items()}
        w = walk(model, routed, signal, dataclasses.replace(rules, hooks=hooks), record=True)
        taken = False
        for position, (ours, near) in seen.items():
            their = theirs.get(f"fbi/support/{position}")
            if position in judged or their is None or their.shape != ours.shape:
                continue
            judged.add(position)
            differ = their != ours
            ok = differ & near
            key = f"fbi/support/{position}"
            if (differ & ~ok).any():
                result.refused[key] = (f"{int((differ & ~ok).sum())} entries decided otherwise far from the threshold "
                                       f"(or with an exact 0 factor)"
                                       f"{_which_decision(detail.get(position, {}), ours, their, differ & ~ok, options)}")
            if ok.any():
                result.accepted[key] = int(ok.sum())
                forced[position] = np.where(ok, their, ours)
                taken = True
                break  # the walk below this position changes: re-run it before judging the next one
        if not taken:
            break
    if forced or rerun:
        result.expected.update({f"fbi/backward/{k}": v for k, v in w.backward.items()})
        result.expected.update({f"fbi/support/{k}": v for k, v in w.support.items()})
        result.expected["attr/fbi"] = w.signal


def _replayed_decision(position, decision, options, tol, seen, forced, detail):
    """One of FBI's decisions as a hook that notes in `seen` where it is near its threshold (in `detail` its own
    support and distance from the threshold), and imposes the support `forced` gives at its position instead of
    its own."""
    def hook(g, a):
        kept, near, margin = _fbi_decision(decision.kind, decision.scored(g), a, options, tol)
        detail.setdefault(position, {})[decision.kind] = (kept, margin)
        if position in seen:
            kept, near = seen[position][0] & kept, seen[position][1] | near
        seen[position] = (kept, near)
        if position in forced:
            return g * forced[position], forced[position]
        return decision(g, a)
    return hook


def _fbi_decision(kind, g, a, options, tol):
    """(our support, where it is within tol x scale of going the other way, how far from its threshold it is) of
    one FBI decision: the distance |g*a - tau| / max|g*a| for the mask, |score - the boundary between the k-th and
    the next map| / max|score| for the top-k (each image against its own scale)."""
    if kind == "mask":
        product = g * a
        threshold = R.mask_threshold(product, float(options["tau"]), options["tau_mode"] == "relative")
        with np.errstate(invalid="ignore"):  # an infinite tau: every entry is infinitely far (inf - inf: NaN, not near)
            margin = np.abs(product - threshold) / _image_scale(product)
        # A product with an exact zero factor (a ReLU's 0, a signal already masked) is exactly 0 in every
        # implementation: which side of the threshold it falls on is the rule ('>' or '>='), not rounding.
        return product > threshold, (margin <= tol) & (g != 0) & (a != 0), margin
    scores = R.topk_scores(g, a, options["topk_score"], options["topk_sum"])  # (N, C)
    ours = R.fbi_topk(options["k"], options["topk_score"], options["topk_sum"])(g, a)[1]
    count = R.count_of(options["k"], g.shape[-1])
    ranked = np.sort(scores, axis=1)[:, ::-1]  # (N, C)
    boundary = ranked[:, count - 1:count + 1].mean(axis=1, keepdims=True) if count < g.shape[-1] \
        else ranked[:, -1:] - 1
    margin = np.broadcast_to((np.abs(scores - boundary) / _image_scale(scores))[:, None, None, :], ours.shape)
    return ours, margin <= tol, margin


def _which_decision(detail, ours, theirs, wrong, options):
    """'; the top-k ...' / '; the tau mask ...': which of FBI's decisions at a position the other file took
    otherwise at the entries `wrong`, and how far from its threshold the reference was there."""
    out = []
    if "topk" in detail and ours.ndim == 4:
        kept, margin = detail["topk"]
        ours_maps, their_maps = ours.any(axis=(1, 2)), theirs.any(axis=(1, 2))  # (N, C): maps with any support
        count = R.count_of(options["k"], ours.shape[-1])
        if (ours_maps != their_maps).any():
            n = int(np.flatnonzero((ours_maps != their_maps).any(axis=1))[0])
            theirs_n, ours_n = np.flatnonzero(their_maps[n]), np.flatnonzero(kept[n, 0, 0])
            masked = "; scored on the signal after the tau mask there" if "mask" in detail else ""
            text = (f"the top-k selection: image {n} keeps maps {_few(theirs_n)} where the reference keeps "
                    f"{_few(ours_n)} (k = {options['k']} of {ours.shape[-1]} maps: {count}, by max(1, floor(k * C + "
                    f"0.5)){masked})")
            changed = np.setxor1d(theirs_n, ours_n)
            if changed.size:
                text += f", the nearest of those maps {float(margin[n, 0, 0, changed].min()):.2g} of the largest " \
                        f"score from the k-th"
            out.append(text)
    if "mask" in detail:
        kept, margin = detail["mask"]
        same_maps = wrong if "topk" not in detail or ours.ndim != 4 else \
            wrong & (ours.any(axis=(1, 2), keepdims=True) == theirs.any(axis=(1, 2), keepdims=True))
        if same_maps.any():
            out.append(f"the tau mask (g * a > tau, tau = {options['tau']} {options['tau_mode']}): "
                       f"{int(same_maps.sum())} entries, the nearest {float(margin[same_maps].min()):.2g} of the image's "
                       f"largest |g * a| from tau")
    return "; decided otherwise: " + "; ".join(out) if out else ""


def _few(indices, most=6):
    """'3, 7, 9' or '3, 7, 9, ... (12)'."""
    shown = ", ".join(map(str, indices[:most]))
    return shown + (f", ... ({len(indices)})" if len(indices) > most else "") if len(indices) else "none"


def _image_scale(a):
    """max|a| of each image (N, 1, ..., 1), 1 where an image is all zero: FBI's decisions are judged against
    their own image's magnitude (with the contrast start, images differ in scale by up to 1e5)."""
    m = np.abs(a).reshape(len(a), -1).max(axis=1)  # (N,)
    return np.where(m > 0, m, 1.0).reshape((len(a),) + (1,) * (a.ndim - 1))


def _many_inputs(model, fp, target, method, options, theirs, eps, rates, tol, act_error, result):
    """Integrated gradients or SmoothGrad replayed on each of their inputs, in the reference's own batches (so
    that without other decisions it is the reference bit for bit): with the port's max-pool winners where it
    exports them (its switches on these inputs are not otherwise known), and with the ReLU gates it may have
    decided otherwise inferred from its attribution (see `explain_gate_flips`)."""
    options = _options(options)
    x = fp.x
    if (method == "integrated_gradients" and options["baseline"] != "zeros") or \
            (method == "smoothgrad" and options["base"] != "gradient"):
        return
    count = options["steps"] if method == "integrated_gradients" else options["samples"]
    weight = x.astype(np.float64) / count if method == "integrated_gradients" else np.full(x.shape, 1.0 / count)
    pools = [layer.name for layer in model.layers if isinstance(layer, MaxPool2D)]
    exported = {}
    for name in pools:
        their, shape = theirs.get(f"{method}/switch/{name}"), (len(x), count, *fp.switches[name].shape[1:])
        if their is not None and their.shape != shape:
            result.refused[f"{method}/switch/{name}"] = f"shape {their.shape}, expected (N, {count}, Ho, Wo, C) = {shape}"
            their = None
        exported[name] = their
    replayed = all(v is not None for v in exported.values())
    state = {"flips": [], "accepted": 0, "near_ties": 0, "ties": {name: (0, 0) for name in pools}}

    def gradient_at(n, rows, inputs):
        step_fp = model.forward(inputs, keep_pre_activations=True)
        z = step_fp.pre_activations
        if replayed:  # the other's rounding on these inputs is unknown: values within tol x scale may be swapped
            step_eps = {name: bound if np.isfinite(eps[name]) else -np.inf
                        for name, bound in rounding(model, step_fp, {}, tol).items()}
            patched, accepted, refused, ties = switch_choices(
                model, step_fp, {k: v[n, rows] for k, v in exported.items()}, {}, step_eps, f"{method}/switch/")
            state["accepted"] += sum(accepted.values())
            state["ties"] = {k: (d + ties[k][0], t + ties[k][1]) for k, (d, t) in state["ties"].items()}
            for key, why in refused.items():
                result.refused.setdefault(key, why)
            step_fp = dataclasses.replace(step_fp, switches={**step_fp.switches, **patched})
        else:
            state["near_ties"] += sum(v["near"] for v in near_ties_of(model, step_fp).values())
        w = walk(model, step_fp, R.start_onehot(step_fp.logits, step_fp.probs, np.full(len(inputs), target[n])),
                 GRADIENT, record=True)
        state["flips"] += [Flip(step_fp, row, n, i, unit, change)
                           for row, i, unit, change in near_zero_gates(model, z, w.backward, act_error)]
        return w.signal

    if method == "integrated_gradients":
        expected = multipass.integrated_gradients(model, x, target, "zeros", count, options["batch_size"],
                                                  gradient_at=gradient_at)
    else:
        expected = multipass.smoothgrad(model, x, target, "gradient", count, options["noise"], options["seed"],
                                        options["batch_size"], gradient_at=gradient_at)
    key = f"attr/{method}"
    their = theirs.get(key)
    if their is not None and their.shape == expected.shape:
        expected, inferred = explain_gate_flips(model, state["flips"], weight, expected, their)
        if inferred:
            result.accepted[f"{method}/gate"] = inferred
    if state["accepted"]:
        result.accepted[f"{method}/switch"] = state["accepted"]
    result.refused.update(tie_refusals(state["ties"], rates, f"{method}/switch/"))
    if replayed:
        result.ties.update({f"{method}/switch/{name}": counts for name, counts in state["ties"].items()})
    if state["near_ties"]:
        result.hints[key] = (f"its {count} inputs per image hold {state['near_ties']} near-tie max-pool windows: "
                             f"write {method}/switch/<pool> (the winners on each input) for compare to replay them")
    result.expected[key] = expected


@dataclass
class Flip:
    """A ReLU unit near 0 on one input of a many-input method: the change of the backward signal at its
    pre-activation if the other decided its gate the other way."""
    fp: object       # the forward pass of the batch holding that input
    row: int         # the input's row in that batch
    image: int       # the image it belongs to
    layer: int       # the ReLU layer's index
    unit: tuple      # the unit's index within the layer's output (without the batch axis)
    change: float


MAX_GATES = 512  # near-zero ReLU units per image whose flip is tried, the largest signals first


def near_zero_gates(model, z, backward, act_error):
    """The ReLU units of a forward pass whose pre-activation is within rounding of 0 (4 x the other's largest
    error on that layer's output on x, at least 1e-6 x max|z|): [(row, layer index, unit index, change of the
    signal at the pre-activation if the other decided the gate the other way)], at most MAX_GATES per row, the
    largest changes first."""
    out = []
    for i, layer in enumerate(model.layers):
        if layer.name not in z or i == len(model.layers) - 1:
            continue
        pre = z[layer.name]
        bound = max(4 * act_error.get(layer.name, 0.0), 1e-6 * (float(np.abs(pre).max()) or 1.0))
        g = backward[layer.name]
        for unit in zip(*np.nonzero((np.abs(pre) <= bound) & (g != 0))):
            change = -g[unit] if pre[unit] > 0 else g[unit]  # open gate closed, or closed gate opened
            out.append((int(unit[0]), i, tuple(int(u) for u in unit[1:]), float(change)))
    out.sort(key=lambda flip: -abs(flip[3]))
    per_row = {}
    return [flip for flip in out if per_row.setdefault(flip[0], []).append(flip) or len(per_row[flip[0]]) <= MAX_GATES]


def explain_gate_flips(model, flips, weight, expected, theirs):
    """(expected with the flips that explain the other's attribution, how many): each candidate flip's exact
    effect on the attribution (a walk from its unit down to the input) is applied when it brings `expected`
    closer to `theirs`, the largest first; a flip the difference does not show is not applied."""
    inferred, out = 0, expected.astype(np.float64)
    for n in sorted({flip.image for flip in flips}):
        mine = sorted([f for f in flips if f.image == n], key=lambda f: -abs(f.change))[:MAX_GATES]
        effects = [weight[n] * e for e in gate_effects(model, mine)]
        effects.sort(key=lambda e: -np.abs(e).max())
        for effect in effects:
            support = effect != 0
            before = theirs[n][support] - out[n][support]
            after = before - effect[support]
            if np.sum(after * after) < np.sum(before * before) - 1e-30:
                out[n] += effect
                inferred += 1
    return (out.astype(expected.dtype) if inferred else expected), inferred


def gate_effects(model, flips, chunk=32):
    """The change of the input gradient (H, W, C) each flip causes: a gradient walk from the flipped unit's
    pre-activation down to the input, through the rest of that input's gates and switches."""
    effects = [None] * len(flips)
    groups = {}
    for k, flip in enumerate(flips):
        groups.setdefault((id(flip.fp), flip.row, flip.layer), []).append(k)
    for ks in groups.values():
        for start in range(0, len(ks), chunk):
            part = ks[start:start + chunk]
            first = flips[part[0]]
            fp, row, i, b = first.fp, first.row, first.layer, len(part)
            one = lambda a: np.repeat(a[row:row + 1], b, axis=0)  # noqa: E731  (this input, b times)
            name = model.layers[i].name
            g = np.zeros((b, *model.output_shape(name)), dtype=fp.x.dtype)
            for r, k in enumerate(part):
                g[(r, *flips[k].unit)] = flips[k].change
            below = model.layers[:i + 1]
            local = dataclasses.replace(fp, x=one(fp.x), outputs={layer.name: one(fp.outputs[layer.name]) for layer in below},
                                        switches={k: one(v) for k, v in fp.switches.items()})
            g = walk(model, local, g, GRADIENT, start_at=name).signal
            for r, k in enumerate(part):
                effects[k] = g[r].astype(np.float64)
    return effects
