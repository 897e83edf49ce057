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
from fbi_ref.methods.tables import GRADIENT, backprop_method
from fbi_ref.methods.traversal import walk
from fbi_ref.nn import layers as L
from fbi_ref.nn.network import MaxPool2D
from fbi_ref.reference.build import near_ties as near_ties_of

SWITCH_ROUTED = ("gradient", "gradient_x_input", "deconvnet", "guided_backprop", "lrp_epsilon", "lrp_zplus",
                 "gradcam", "guided_gradcam")


@dataclass
class Replay:
    """What the replay found: arrays to compare against instead of the reference's, and notes per key."""
    expected: dict = field(default_factory=dict)   # key -> array the port should have, given its near-tie choices
    accepted: dict = field(default_factory=dict)   # decision key -> how many near-tie decisions were taken from the port
    refused: dict = field(default_factory=dict)    # decision key -> why some decisions were not accepted
    hints: dict = field(default_factory=dict)      # key -> what the other file could add to be checked exactly


def first_max(a, layer):
    """The switches (N, Ho, Wo, C) of a max-pool over a (N, H, W, C) by the documented rule (first maximum)."""
    return L.maxpool_forward(np.ascontiguousarray(a), layer.pool_size, layer.strides, layer.padding)[1]


def window_values(a, switches):
    """a (N, H, W, C) at the given flat switch indices (N, Ho, Wo, C)."""
    return L.pick_switches(a, switches)


def rounding(model, fp, their_inputs, tol):
    """{pool: how far apart two values of its input may be and still be swapped by the other implementation}:
    twice the other's largest error on that input (its act/ array), or tol x max|input| without it."""
    out = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, MaxPool2D):
            a = fp.x if i == 0 else fp.outputs[model.layers[i - 1].name]
            theirs = their_inputs.get(layer.name)
            bound = tol * (float(np.abs(a).max()) or 1.0)  # never more than the tolerance allows
            if theirs is not None and theirs.shape == a.shape:
                bound = min(bound, 2 * float(np.abs(theirs.astype(np.float64) - a).max()) + 1e-12 * bound)
            out[layer.name] = bound
    return out


def switch_choices(model, fp, theirs, their_inputs, eps, key_prefix="switch/"):
    """Accepted switches per pool: {pool: patched switches}, and counts and refusals by decision key.

    theirs: {pool: the port's switches or None}; their_inputs: {pool: the port's activations at the pool's
    input or None} (to derive switches, or to check theirs against the documented rule); eps: {pool: the
    largest gap between two window values that rounding can swap} (see `rounding`).
    """
    patched, accepted, refused = {}, {}, {}
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, MaxPool2D) or layer.name not in fp.switches:
            continue
        ours = fp.switches[layer.name]
        a = fp.x if i == 0 else fp.outputs[model.layers[i - 1].name]  # the reference's pool input
        own = first_max(their_inputs[layer.name], layer) if their_inputs.get(layer.name) is not None else None
        chosen = theirs.get(layer.name)
        if chosen is None:
            chosen = own
        if chosen is None or chosen.shape != ours.shape:
            continue
        differ = chosen != ours
        if not differ.any():
            continue
        gap = window_values(a, ours) - window_values(a, np.where(differ, chosen, ours))  # >= 0
        near = gap <= eps[layer.name]
        consistent = np.ones_like(differ) if own is None else (chosen == own)
        ok = differ & near & consistent
        key = key_prefix + layer.name
        if (differ & ~ok).any():
            bad = int((differ & ~ok).sum())
            refused[key] = (f"{bad} window{'s' if bad > 1 else ''} choose another winner where the reference has a "
                            f"clear maximum" if (differ & ~near).any() else
                            f"{bad} winner{'s' if bad > 1 else ''} against the first-maximum rule on the port's own "
                            f"activations")
        if ok.any():
            accepted[key] = int(ok.sum())
            patched[layer.name] = np.where(ok, chosen, ours)
    return patched, accepted, refused


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
    inputs = {name: _input_of(model, name) for name in pools}
    their_switches = {name: theirs.get(f"switch/{name}") for name in pools}
    their_inputs = {name: theirs.get(f"act/{inputs[name]}") if inputs[name] != "input" else theirs.get("x")
                    for name in pools}
    result = Replay()
    eps = rounding(model, fp, their_inputs, tol)
    patched, result.accepted, result.refused = switch_choices(model, fp, their_switches, their_inputs, eps)
    result.expected.update({f"switch/{name}": switches for name, switches in patched.items()})
    gates = gate_choices(model, fp, theirs, result, tol)
    routed = dataclasses.replace(fp, switches={**fp.switches, **patched}, outputs={**fp.outputs, **gates})
    if patched or gates:
        for method in [m for m in SWITCH_ROUTED if m in meta_methods]:
            result.expected.update(_single(model, routed, fp, target, method, meta_methods[method]))
    if "fbi" in meta_methods:
        _fbi(model, routed, target, meta_methods["fbi"], theirs, tol, result, rerun=bool(patched or gates))
    act_error = {layer.name: _largest_error(fp.outputs[layer.name], theirs.get(f"act/{layer.name}"))
                 for layer in model.layers}
    for method in ("integrated_gradients", "smoothgrad"):
        if method in meta_methods and f"attr/{method}" in theirs:
            _many_inputs(model, ref, fp, target, method, meta_methods[method], theirs, eps, tol, act_error, result)
    return result


def _largest_error(mine, theirs):
    """max |theirs - mine| (0 when theirs is missing or of another shape)."""
    if theirs is None or theirs.shape != mine.shape:
        return 0.0
    return float(np.abs(theirs.astype(np.float64) - mine).max())


def _methods(ref):
    """{method: options} from the reference's meta."""
    import json
    return json.loads(str(ref["meta"]))["methods"]


def _input_of(model, name):
    """The position whose activation a layer takes: the previous layer's name, or 'input'."""
    i = model.index(name)
    return "input" if i == 0 else model.layers[i - 1].name


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
    name = "gradient" if method == "gradient_x_input" else method
    backward, signal = _walk(model, routed, target, name, options)
    if method == "gradient_x_input":
        return {"attr/gradient_x_input": signal * fp.x}
    return {**{f"{method}/backward/{k}": v for k, v in backward.items()}, f"attr/{method}": signal}


def _walk(model, fp, target, method, options, forced=None, observe=None):
    """(recorded backward signals, attribution) of a single-walk method on a forward pass."""
    start, rules, _ = backprop_method(model, method, options)
    w = walk(model, fp, start(fp.logits, fp.probs, target), rules, record=True, forced=forced, observe=observe)
    return w.backward, w.signal


def _fbi(model, routed, target, options, theirs, tol, result, rerun):
    """FBI replayed with the port's mask and top-k decisions where the reference's are within `tol` of flipping."""
    options = _options(options)
    tau, relative = float(options["tau"]), options["tau_mode"] == "relative"
    forced = {}

    def observe(position, kind, g, a):
        their = theirs.get(f"fbi/support/{position}")
        if their is None:
            return
        if kind == "mask":
            product = g * a
            ours = product > R.mask_threshold(product, tau, relative)
            if their.shape != ours.shape:
                return
            margin = np.abs(product - R.mask_threshold(product, tau, relative))
            near = margin <= tol * (float(np.abs(product).max()) or 1.0)
        else:
            scores = R.topk_scores(g, a, options["topk_score"])  # (N, C)
            ours = R.fbi_topk(options["k"], options["topk_score"])(g, a)[1]
            if their.shape != ours.shape:
                return
            count = R.count_of(options["k"], g.shape[-1])
            ranked = np.sort(scores, axis=1)[:, ::-1]  # (N, C)
            boundary = ranked[:, count - 1:count + 1].mean(axis=1, keepdims=True) if count < g.shape[-1] \
                else ranked[:, -1:] - 1
            near_channel = np.abs(scores - boundary) <= tol * (float(np.abs(scores).max()) or 1.0)  # (N, C)
            near = np.broadcast_to(near_channel[:, None, None, :], ours.shape)
        differ = their != ours
        ok = differ & near
        key = f"fbi/support/{position}"
        if (differ & ~ok).any():
            result.refused[key] = f"{int((differ & ~ok).sum())} entries decided otherwise far from the threshold"
        if ok.any():
            result.accepted[key] = int(ok.sum())
            forced[position] = np.where(ok, their, ours)

    start, rules, _ = backprop_method(model, "fbi", options)
    w = walk(model, routed, start(routed.logits, routed.probs, target), rules, record=True, forced=forced,
             observe=observe)
    if forced or rerun:
        result.expected.update({f"fbi/backward/{k}": v for k, v in w.backward.items()})
        result.expected.update({f"fbi/support/{k}": v for k, v in w.support.items()})
        result.expected["attr/fbi"] = w.signal


def _many_inputs(model, ref, fp, target, method, options, theirs, eps, tol, act_error, result):
    """Integrated gradients or SmoothGrad replayed on each of their inputs: with the port's max-pool winners where
    it exports them (its switches on these inputs are not otherwise known), and with the ReLU gates it may have
    decided otherwise inferred from its attribution (see `explain_gate_flips`)."""
    options = _options(options)
    x = fp.x
    if method == "integrated_gradients":
        if options["baseline"] != "zeros":
            return
        inputs = [alpha * x for alpha in multipass.ig_alphas(options["steps"], x.dtype)]  # from a zero baseline
        weight = x.astype(np.float64) / len(inputs)  # (x - b) / steps: how a gradient change shows in the attribution
    else:
        noise = ref.get("smoothgrad/noise")
        if noise is None or options["base"] != "gradient":
            return
        inputs = [x + noise[:, s] for s in range(noise.shape[1])]
        weight = np.full(x.shape, 1.0 / len(inputs))
    pools = [layer.name for layer in model.layers if isinstance(layer, MaxPool2D)]
    exported = {name: theirs.get(f"{method}/switch/{name}") for name in pools}
    replayed = all(v is not None and v.shape[1] == len(inputs) for v in exported.values())
    total, flips, accepted, refused, near_ties = np.zeros(x.shape), [], 0, {}, 0
    for s, inp in enumerate(inputs):
        step_fp, z = forward_with_z(model, inp)
        if not replayed:
            near_ties += sum(v["near"] for v in near_ties_of(model, step_fp).values())
        else:
            # the other's rounding on these inputs is unknown: values within tol x scale may be swapped
            step_eps = {name: max(value, bound) for (name, value), bound in
                        zip(eps.items(), rounding(model, step_fp, {}, tol).values())}
            theirs_s = {name: v[:, s] for name, v in exported.items()}
            patched, acc, ref_ = switch_choices(model, step_fp, theirs_s, {}, step_eps, key_prefix=f"{method}/switch/")
            accepted += sum(acc.values())
            refused.update(ref_)
            step_fp = dataclasses.replace(step_fp, switches={**step_fp.switches, **patched})
        start = R.start_onehot(step_fp.logits, step_fp.probs, target)
        w = walk(model, step_fp, start, GRADIENT, record=True)
        total += w.signal
        flips += [(step_fp, *flip) for flip in near_zero_gates(model, z, w.backward, act_error)]
    key = f"attr/{method}"
    expected = weight * total
    their = theirs.get(key)
    if their is not None and their.shape == expected.shape:
        expected, inferred = explain_gate_flips(model, flips, weight, expected, their)
        if inferred:
            result.accepted[f"{method}/gate"] = inferred
    if accepted:
        result.accepted[f"{method}/switch"] = accepted
    result.refused.update(refused)
    if near_ties:
        result.hints[key] = (f"its {len(inputs)} inputs hold {near_ties} near-tie max-pool windows: write "
                             f"{method}/switch/<pool> (the winners on each input) for compare to replay them")
    result.expected[key] = expected.astype(x.dtype)


MAX_GATES = 512  # near-zero ReLU units per image whose flip is tried, the largest signals first


def near_zero_gates(model, z, backward, act_error):
    """The ReLU units of a forward pass whose pre-activation is within rounding of 0 (4 x the other's largest
    error on that layer's output on x, at least 1e-6 x max|z|): [(image, layer index, unit index, change of the
    signal at the pre-activation if the other decided the gate the other way)]."""
    out = []
    for i, layer in enumerate(model.layers):
        if layer.name not in z or i == len(model.layers) - 1:
            continue
        pre = z[layer.name]
        bound = max(4 * act_error.get(layer.name, 0.0), 1e-6 * (float(np.abs(pre).max()) or 1.0))
        g = backward[layer.name]
        for unit in zip(*np.nonzero((np.abs(pre) <= bound) & (g != 0))):
            change = -g[unit] if pre[unit] > 0 else g[unit]  # open gate closed, or closed gate opened
            out.append((int(unit[0]), i, unit[1:], float(change)))
    return out


def explain_gate_flips(model, flips, weight, expected, theirs):
    """(expected with the flips that explain the other's attribution, how many): each candidate flip's exact
    effect on the attribution (a walk from its unit down to the input) is applied when it brings `expected`
    closer to `theirs`, the largest first; a flip the difference does not show is not applied."""
    inferred = 0
    expected = expected.copy()
    for n in sorted({flip[1] for flip in flips}):
        mine = sorted([f for f in flips if f[1] == n], key=lambda f: -abs(f[4]))[:MAX_GATES]
        effects = [weight[n] * e for e in gate_effects(model, mine)]
        effects.sort(key=lambda e: -np.abs(e).max())
        for effect in effects:
            support = effect != 0
            before = theirs[n][support] - expected[n][support]
            after = before - effect[support]
            if np.sum(after * after) < np.sum(before * before) - 1e-30:
                expected[n] += effect
                inferred += 1
    return expected, inferred


def gate_effects(model, flips, chunk=32):
    """The change of the input gradient (H, W, C) each flip causes: a gradient walk from the flipped unit's
    pre-activation down to the input, through the rest of that forward pass's gates and switches."""
    from fbi_ref.methods.traversal import _through_layer
    effects = []
    for start in range(0, len(flips), chunk):
        part = flips[start:start + chunk]
        by_layer = {}
        for k, (fp, n, i, unit, change) in enumerate(part):
            by_layer.setdefault((id(fp), n, i), []).append((k, fp, unit, change))
        out = [None] * len(part)
        for (_, n, i), items in by_layer.items():
            fp = items[0][1]
            b = len(items)
            one = lambda a: np.repeat(a[n:n + 1], b, axis=0)  # noqa: E731  (this image, b times)
            g = np.zeros((b, *model.output_shape(model.layers[i].name)), dtype=fp.x.dtype)
            for row, (_, _, unit, change) in enumerate(items):
                g[(row, *unit)] = change
            layer = model.layers[i]
            a_in = one(fp.x if i == 0 else fp.outputs[model.layers[i - 1].name])
            g = GRADIENT.linear(g, layer, a_in, i == 0)
            local = dataclasses.replace(fp, switches={k: one(v) for k, v in fp.switches.items()})
            for j in range(i - 1, -1, -1):
                below = model.layers[j]
                j_in = one(fp.x if j == 0 else fp.outputs[model.layers[j - 1].name])
                g = _through_layer(below, g, j_in, one(fp.outputs[below.name]), local, GRADIENT, False, j == 0)
            for row, (k, *_rest) in enumerate(items):
                out[k] = g[row].astype(np.float64)
        effects += out
    return effects


def forward_with_z(model, x):
    """The forward pass and every ReLU layer's pre-activation {name: z}."""
    from fbi_ref.nn.model import ForwardPass, layer_forward
    fp, a, z = ForwardPass(x=x), x, {}
    for layer in model.layers:
        pre, a, switches = layer_forward(layer, a)
        fp.outputs[layer.name] = a
        if switches is not None:
            fp.switches[layer.name] = switches
        if getattr(layer, "activation", None) == "relu":
            z[layer.name] = pre
        fp.logits = pre
    fp.probs = L.softmax(fp.logits)
    return fp, z
