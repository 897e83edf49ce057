"""Choosing FBI's settings for a model on the validation set, by a rule stated before the run.

The rule weighs precision, coverage and class discrimination equally:

    score = (relevance mass + relevance rank accuracy on single-object images
             + class-conditional pointing on pair images) / 3

Mass alone rewards the sparsest map that stays inside the object (a sliver of one edge); rank accuracy
(Arras et al. 2022, who pair it with mass) asks whether the map's K highest pixels cover the object's K.

1. `sweep`: k x tau over a grid, with the paper's readings of every other option (fbi.DEFAULTS): the best
   score is the row `fbi_paper_readings` of the benchmark.
2. `select`: from there, greedy ascent over every option, one change at a time: each round tries every
   other value of every option (and the grid's k and tau next to the current ones) and takes the change with the best score,
   if it raises the score by at least MIN_GAIN; at most settings.rounds rounds (MAX_ROUNDS by default). The first round is the ablation
   of every option from the paper's readings. The result is the row `fbi`.

Everything is measured on the validation images (their own seed); the test images are never looked at.
"""
from __future__ import annotations

import hashlib

import numpy as np

from fbi_ref.evaluation import metrics as M
from fbi_ref.evaluation.workers import run_tasks
from fbi_ref.methods.catalog import METHODS, heatmap, walk_rules
from fbi_ref.methods.explain import explain
from fbi_ref.methods.fbi import DEFAULTS, OPTIONS
from fbi_ref.methods.traversal import walk

MIN_GAIN = 0.01      # a change must raise the validation score by this much to be taken (smaller: noise)
MAX_ROUNDS = 4
# Every FBI option's values from its record (the paper's reading first), for the ablation; k, tau and tau_mode
# come from the sweep grid.
SWEPT = ("k", "tau", "tau_mode")
OPTION_RECORDS = [option for option in OPTIONS if option.choices and option.name not in SWEPT]


def score(m):
    """The selection rule: the mean of relevance mass, relevance rank accuracy and class-conditional pointing."""
    return float((m["mass"] + m["rank"] + m["class_pointing"]) / 3)


_FORWARD = {}  # (weights and images digest, batch size) -> their forward passes, for every variant a process runs


_FINGERPRINTS = {}  # (id(model), id(x)) -> (model, x, digest): the objects kept, so that an id is not reused


def fingerprint(model, x):
    """A digest of a model's weights and a batch of images: what a cached forward pass depends on."""
    known = _FINGERPRINTS.get((id(model), id(x)))
    if known is not None and known[0] is model and known[1] is x:
        return known[2]
    if len(_FINGERPRINTS) >= 8:
        _FINGERPRINTS.clear()
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    for layer in model.layers:
        for name in layer.weights:
            digest.update(np.ascontiguousarray(getattr(layer, name)).tobytes())
    _FINGERPRINTS[id(model), id(x)] = (model, x, digest.hexdigest())
    return digest.hexdigest()


def forward_passes(model, x, batch_size):
    """The forward passes of x in batches, computed once per process for these weights, images and batch size
    (every FBI variant walks back through the same forward pass; only the walk differs)."""
    key = (fingerprint(model, x), batch_size)
    if key not in _FORWARD:
        if len(_FORWARD) >= 2:  # the singles and the pairs of one data set at a time
            _FORWARD.clear()
        _FORWARD[key] = [model.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return _FORWARD[key]


def fbi_maps(model, passes, targets, options, batch_size):
    """FBI heat maps (N, H, W) for targets, walked back through the given forward passes."""
    start, rules, _ = walk_rules(model, "fbi", options)
    maps = []
    for i, fp in enumerate(passes):
        t = targets[i * batch_size:(i + 1) * batch_size]
        maps.append(heatmap(walk(model, fp, start(fp.logits, fp.probs, t), rules).signal, METHODS["fbi"].reduction))
    return np.concatenate(maps)


def variant(model, options, data, settings):
    """One FBI setting on the validation set: its options, localisation and class-conditional scores, score."""
    single, pairs, b = data.single, data.pairs, settings.batch_size
    singles = forward_passes(model, single.x, b)
    maps = fbi_maps(model, singles, single.labels, options, b)  # (N, H, W)
    both = forward_passes(model, pairs.x, b)
    maps_a = fbi_maps(model, both, pairs.labels, options, b)
    maps_b = fbi_maps(model, both, pairs.other_labels, options, b)
    return {"options": dict(options), **scored(maps, maps_a, maps_b, data, settings.tolerance)}


def scored(maps, maps_a, maps_b, data, tol):
    """The validation scores of one method's maps (single images (N, H, W); pairs explained for A and for B),
    with the rule's score: the same columns for every FBI setting and every baseline."""
    single, pairs = data.single, data.pairs
    row = {"pointing": float(M.pointing_game(maps, single.masks, tol).mean()),
           "mass": float(M.relevance_mass(maps, single.masks).mean()),
           "rank": float(M.relevance_rank(maps, single.masks).mean()),
           "class_pointing": float(M.class_pointing(maps_a, maps_b, pairs.masks, pairs.other_masks, tol).mean()),
           "class_sensitivity": float(M.class_sensitivity(maps_a, maps_b, pairs.masks, pairs.other_masks).mean()),
           "support_zeros": float(M.zero_share(maps).mean())}
    return {**row, "score": score(row)}


def variants(model, settings_list, data, settings, desc):
    """variant(...) of every options dict in settings_list, in order, on the worker processes: a few tasks of
    several variants each (interleaved, for balance), so that the validation data are sent to each worker a
    few times rather than once per variant, and each worker's cached forward passes serve many variants."""
    count = min(len(settings_list), 2 * max(settings.jobs, 1))
    chunks = [settings_list[i::count] for i in range(count)]
    done = run_tasks(variant_chunk, [(model, chunk, data, settings) for chunk in chunks], settings, desc)
    out = [None] * len(settings_list)
    for i, rows in enumerate(done):
        out[i::count] = rows
    return out


def variant_chunk(model, settings_list, data, settings):
    """[variant(...)] of several options dicts in one task."""
    return [variant(model, options, data, settings) for options in settings_list]


def sweep(model, data, settings):
    """k x tau (settings.sweep_k, sweep_tau, sweep_tau_mode) with the paper's readings: one dict per point."""
    grid = [{**DEFAULTS, "k": k, "tau": tau, "tau_mode": settings.sweep_tau_mode} for k in settings.sweep_k
            for tau in settings.sweep_tau]  # every option given: the model's own defaults must not creep in
    return variants(model, grid, data, settings, "validation: FBI k x tau")


def best(rows):
    """The row with the highest score (the first of equals)."""
    return max(rows, key=lambda r: r["score"])


def changes(options, settings, model=None):
    """Every setting one option away from `options` (only options that can change anything on `model`):
    [(what changed, new options)]."""
    out = []
    for option in OPTION_RECORDS:
        if model is not None and option.applies is not None and not option.applies(model):
            continue
        name, current = option.name, options.get(option.name, DEFAULTS[option.name])
        out += [(f"{name}={value}", {**options, name: value}) for value in option.choices if value != current]
    if options["tau_mode"] != DEFAULTS["tau_mode"]:  # the paper's absolute tau, with its value
        out.append((f"tau_mode={DEFAULTS['tau_mode']} (tau={DEFAULTS['tau']:g})",
                    {**options, "tau_mode": DEFAULTS["tau_mode"], "tau": DEFAULTS["tau"]}))
    for name, values in (("k", settings.sweep_k), ("tau", settings.sweep_tau)):
        out += [(f"{name}={value:g}", {**options, name: value}) for value in neighbours(values, options[name])]
    return out


def neighbours(grid, value):
    """The grid's values next to `value` (below and above it; every other value if it is not on the grid):
    the sweep already chose k and tau, so a later round only needs to see whether they should move."""
    grid = sorted(set(grid))
    if value not in grid:
        return grid
    i = grid.index(value)
    return grid[max(i - 1, 0):i] + grid[i + 1:i + 2]


def select(model, data, settings, start):
    """Greedy ascent of the score from the options `start`: {'rounds': [[row + 'change'], ...], 'chosen'}."""
    current, rounds = variant(model, start, data, settings), []
    for round_number in range(1, settings.rounds + 1):
        tried = changes(current["options"], settings, model)
        rows = variants(model, [options for _, options in tried], data, settings,
                        f"validation: FBI options, round {round_number}")
        rows = [{**row, "change": what, "gain": row["score"] - current["score"]} for (what, _), row in zip(tried, rows)]
        rounds.append({"from": current, "rows": rows})
        top = best(rows)
        if top["gain"] < MIN_GAIN:
            break
        current = top
    return {"rounds": rounds, "chosen": current}


# FBI's options under which it is DeconvNet exactly (docs/methods.md, "Exact reductions").
AS_DECONVNET = {"start": "onehot", "dense_bias": "ignore", "unpool": "switch", "k": 1.0, "tau": -np.inf,
                "tau_mode": "absolute"}


def steps_from_deconvnet(model, data, settings, readings):
    """Which of FBI's steps costs class evidence: FBI as DeconvNet, then each step of the paper's reading
    (`readings`) added alone: [row + 'step'], the first row DeconvNet itself."""
    base = {**DEFAULTS, **AS_DECONVNET}
    steps = [("(DeconvNet)", {})] + [(f"{name}={readings[name]}", {name: readings[name]})
                                     for name in ("start", "dense_bias", "unpool", "k")]
    tau = {"tau": readings["tau"], "tau_mode": readings["tau_mode"]}
    steps += [(f"tau={readings['tau']:g} ({readings['tau_mode']})", tau),
              (f"tau={readings['tau']:g} ({readings['tau_mode']}), mask_dense=False", {**tau, "mask_dense": False}),
              ("all of them (the paper's readings)", {k: readings[k] for k in readings})]
    rows = variants(model, [{**base, **change} for _, change in steps], data, settings,
                    "validation: FBI from DeconvNet")
    return [{**row, "step": what} for (what, _), row in zip(steps, rows)]


def choose_fbi(model, data, settings):
    """The whole procedure: {'sweep': rows, 'paper_readings': options, 'rounds': ..., 'chosen': options,
    'from_deconvnet': rows, 'rule': text}."""
    rows = sweep(model, data, settings)
    readings = best(rows)["options"]
    selected = select(model, data, settings, readings)
    return {"sweep": rows, "paper_readings": readings, "rounds": selected["rounds"],
            "chosen": selected["chosen"]["options"], "rule": rule(settings),
            "from_deconvnet": steps_from_deconvnet(model, data, settings, readings),
            "baselines": {name: baseline(model, name, data, settings) for name in BASELINES}}


BASELINES = ("guided_backprop", "guided_gradcam")  # reference points of the trade-off figure, on validation too


def baseline(model, method, data, settings):
    """A baseline method's validation scores, measured as variant() measures FBI's (not used by the rule)."""
    single, pairs, b = data.single, data.pairs, settings.batch_size

    def maps(x, targets):
        return np.concatenate([explain(model, x[i:i + b], method, target=targets[i:i + b]).heatmap
                               for i in range(0, len(x), b)])
    return scored(maps(single.x, single.labels), maps(pairs.x, pairs.labels), maps(pairs.x, pairs.other_labels),
                  data, settings.tolerance)


def rule(settings):
    """The rule in words, as the reports state it."""
    return (f"score = (relevance mass + relevance rank accuracy + class-conditional pointing) / 3 on the validation "
            f"set; k x tau by the best "
            f"score with the paper's readings, then greedy: each round takes the one-option change with the best "
            f"score if it gains at least {MIN_GAIN}, at most {settings.rounds} rounds")
