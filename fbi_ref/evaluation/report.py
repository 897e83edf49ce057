"""The benchmark's outputs: Markdown tables, results.json and PNG figures (matplotlib, Agg)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fbi_ref.evaluation import selection
from fbi_ref.figures.panels import add_colorbar, colormap, new_figure, save, show_map
from fbi_ref.io.paths import write_text
from fbi_ref.methods.fbi import DEFAULTS

# (results key, column title, better: +1 higher, -1 lower, 0 no ranking) of the test tables. The wrong-class
# columns are controls, not ranked: an empty map "wins" them; the drops from the true class are what counts.
LOCALISATION = [("pointing", "pointing (2 px) ↑", 1), ("pointing_exact", "pointing (0 px) ↑", 1),
                ("mass", "mass ↑", 1), ("rank", "rank acc. ↑", 1), ("wrong_pointing", "wrong-class pointing", 0),
                ("wrong_mass", "wrong-class mass", 0), ("wrong_rank", "wrong-class rank acc.", 0),
                ("pointing_drop", "pointing drop ↑", 1), ("mass_drop", "mass drop ↑", 1), ("rank_drop", "rank drop ↑", 1)]
DISCRIMINATION = [("class_pointing", "class-cond. pointing ↑", 1), ("class_sensitivity", "class mass share ↑", 1),
                  ("pair_rank", "pair rank acc. ↑", 1),
                  ("pair_rho", "pair ρ", 0), ("deletion", "deletion AUC ↓", -1), ("insertion", "insertion AUC ↑", 1),
                  ("rand_dense", "rand. ρ dense ↓", -1)]
OTHER = [("sanity", "sanity", 0), ("rand_all", "rand. ρ all", 0), ("peak_border", "peak in border %", 0),
         ("peak_distance", "peak distance px (median)", 0), ("zeros", "zeros % (attr.)", 0),
         ("support_zeros", "zeros % (map)", 0), ("ms", "ms / expl.", 0)]
SELECTION_COLUMNS = [("pointing", "pointing ↑"), ("mass", "mass ↑"), ("rank", "rank acc. ↑"),
                     ("class_pointing", "class-cond. pointing ↑"),
                     ("class_sensitivity", "class mass share ↑"), ("support_zeros", "zeros % (map)"),
                     ("score", "score ↑")]
PERCENT = ("zeros", "support_zeros", "peak_border")


# The files a run writes into its output folder (a selection-only run: SWEEP_FILES).
REPORT_FILES = ("benchmark.md", "results.json", "curves.png", "randomisation.png", "examples.png", "pairs.png",
                "selection.png", "tradeoff.png")
SWEEP_FILES = ("selection.md", "selection.json", "selection.png", "tradeoff.png")


def cell(key, value):
    """One table cell: percentages for the sparsity columns, 3 decimals, '–' for a missing value."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in PERCENT:
        return f"{100 * value:.1f}"
    if key in ("ms", "peak_distance"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def median(values):
    """The median of the finite values (None, as JSON writes NaN, and NaN left out); NaN if there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def interval_cell(key, value, interval):
    """'0.975 [0.953, 0.990]': a mean and its bootstrap 95 % interval."""
    if interval is None or any(v is None or math.isnan(v) for v in interval):
        return cell(key, value)
    return f"{cell(key, value)} [{cell(key, interval[0])}, {cell(key, interval[1])}]"


def table(header, rows):
    """A Markdown table from a header list and rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def options_text(options, defaults=None):
    """'k=0.5, tau=10.0, tau_mode=absolute' (or 'defaults'); with `defaults`, only what differs from them."""
    shown = {k: v for k, v in options.items() if defaults is None or k in ("k", "tau", "tau_mode")
             or defaults.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults"


def tied_for_best(results, key, better):
    """The rows tied for the best mean of `key`: the best and every row whose interval overlaps its interval."""
    rows = [n for n in results["rows"] if isinstance(results["metrics"][n].get(key), float)
            and not math.isnan(results["metrics"][n][key]) and key in results["intervals"].get(n, {})]
    if not rows or better == 0:
        return set()
    top = max(rows, key=lambda n: better * results["metrics"][n][key])
    low, high = results["intervals"][top][key]
    return {n for n in rows if results["intervals"][n][key][0] <= high and results["intervals"][n][key][1] >= low}


def metric_table(results, columns):
    """One row per benchmark row: mean [interval] per column, the rows tied for the best in bold."""
    best = {key: tied_for_best(results, key, better) for key, _, better in columns}
    out = []
    for name in results["rows"]:
        m, intervals = results["metrics"][name], results["intervals"][name]
        cells = []
        for key, _, _ in columns:
            if key == "peak_distance":
                text = cell(key, median(results["per_image"][name][key]) if key in m else None)
            elif key in ("sanity", "rand_all", "ms") or key in PERCENT:
                text = cell(key, m.get(key))
            else:
                text = interval_cell(key, m.get(key), intervals.get(key))
            cells.append(f"**{text}**" if name in best[key] else text)
        out.append([f"`{name}`"] + cells)
    return table(["row"] + [title for _, title, _ in columns], out)


def main_table(results):
    """The localisation table (the one printed at the end of a run)."""
    return metric_table(results, LOCALISATION)


def selection_row(r, chosen=False):
    """A row of a selection table."""
    mark = (lambda s: f"**{s}**") if chosen else (lambda s: s)
    return [mark(cell(key, r[key])) for key, _ in SELECTION_COLUMNS]


def sweep_table(rows, readings):
    """The k x tau grid with the paper's readings; the chosen point in bold."""
    out = [[f"{r['options']['k']:g}", f"{r['options']['tau']:g} ({r['options']['tau_mode']})"]
           + selection_row(r, r["options"] == readings) for r in rows]
    return table(["k", "τ (mode)"] + [title for _, title in SELECTION_COLUMNS], out)


def round_table(round_):
    """One round of the greedy selection: its starting point, then every one-option change, best first."""
    out = [["(start)", "–"] + selection_row(round_["from"])]
    ranked = sorted(round_["rows"], key=lambda r: -r["score"])
    taken = ranked[0]["gain"] >= selection.MIN_GAIN if ranked else False
    for i, r in enumerate(ranked):
        out.append([f"`{r['change']}`", f"{r['gain']:+.3f}"] + selection_row(r, chosen=taken and i == 0))
    return table(["change", "gain"] + [title for _, title in SELECTION_COLUMNS], out)


def selection_text(sel):
    """The selection's sections: the rule, the sweep, every round, the choice."""
    parts = ["## FBI's settings, chosen on the validation set", "", f"The rule (stated before the run): {sel['rule']}.",
             "", "### k × τ with the paper's readings", "", sweep_table(sel["sweep"], sel["paper_readings"]), ""]
    for i, round_ in enumerate(sel["rounds"], start=1):
        title = "the ablation: every option changed alone from the paper's readings" if i == 1 else "from the last choice"
        parts += [f"### Round {i}: {title}", "", round_table(round_), ""]
    if sel.get("from_deconvnet"):
        out = [[f"`{r['step']}`"] + selection_row(r) for r in sel["from_deconvnet"]]
        parts += ["### Which step costs class evidence: FBI as DeconvNet, then each step of the paper's reading "
                  "added alone", "", table(["step"] + [title for _, title in SELECTION_COLUMNS], out), ""]
    parts += [f"Chosen (`fbi`): `{options_text(sel['chosen'], DEFAULTS)}`; the paper's readings with the best k and τ "
              f"(`fbi_paper_readings`): `{options_text(sel['paper_readings'], DEFAULTS)}`.", ""]
    return parts


def comparison_table(results):
    """`fbi` minus each compared row: the mean difference and its paired bootstrap 95 % interval."""
    keys = [("pointing", "pointing"), ("mass", "mass"), ("rank", "rank acc."), ("class_pointing", "class-cond. pointing"),
            ("pair_rank", "pair rank acc."), ("pointing_drop", "pointing drop"), ("mass_drop", "mass drop"),
            ("rank_drop", "rank acc. drop")]
    out = [[f"`{other}`"] + [f"{d[key]['difference']:+.3f} [{d[key]['interval'][0]:+.3f}, {d[key]['interval'][1]:+.3f}]"
                             if key in d else "–" for key, _ in keys] for other, d in results["comparisons"].items()]
    return table(["`fbi` minus"] + [title for _, title in keys], out)


def verdict_table(results):
    """Each row's rho after the dense step for every weight draw, with its interval and sanity."""
    r = results["randomisation"]
    seeds = r.get("seeds", [results["settings"]["random_seed"]])
    rows = []
    for name, v in r["verdict"].items():
        draws = v.get("draws", [v])
        rows.append([f"`{name}`", v["sanity"]] + [f"{interval_cell('r', d['rho'], d['interval'])} {d['sanity']}"
                                                  for d in draws])
    return table(["row", "verdict"] + [f"seed {seed}" for seed in seeds], rows)


def randomisation_table(results):
    """Mean Spearman rank correlation of |heat map| after each cascade step (columns: the layers)."""
    r = results["randomisation"]
    rows = [[f"`{name}`"] + [cell("rho", v) for v in r["rho"][name]] for name in results["rows"] if name in r["rho"]]
    return table(["row"] + [f"{name}" for name in r["layers"]], rows)


def settings_text(s):
    """The settings of a run as a bullet list."""
    lines = [
        f"- test set: `shapes.generate(n, seed={s['test_seed']}, kind)`: {s['n_test']} `{s['kind']}` images "
        f"(pointing, mass, peak, sparsity, time), the first {s['n_wrong']} also explained for a class they do not "
        f"hold, {s['n_pairs']} `pair` images (class-conditional pointing and mass share), deletion / insertion on "
        f"the first {s['n_curves']}, the randomisation cascade on the first {s['n_random']}, its verdict on the "
        f"first {s['n_verdict']} for each of {s.get('verdict_draws', 1)} weight draws",
        f"- validation set (FBI's settings, the centre's sigma): seed {s['val_seed']}: {s['n_val']} `{s['kind']}` "
        f"images, {s['n_val_pairs']} `pair` images",
        "- explained class: the labelled object's class (ground truth), whatever the prediction",
        f"- pointing: the maximum inside the mask dilated by a disk of radius {s['tolerance']:g} px (and 0 px)",
        f"- intervals: percentile bootstrap over images, {s['bootstrap']} resamples, 95 %; rows whose interval "
        f"overlaps the best one's are tied for best (bold)",
        f"- deletion / insertion: {s['steps']} steps of 1/{s['steps']} of the pixels (all channels), ranked by heat "
        f"map, ties in a fixed pseudo-random order; deleted pixels become `{s['deletion_baseline']}`, insertion "
        f"starts from `{s['insertion_baseline']}` ('mean' = 0 in caffe space, the ImageNet mean colour; 'blur' = "
        f"Gaussian blur, sigma {s['blur_sigma']:g} px); AUC by the trapezoid rule over the fraction 0..1",
        f"- randomisation: cascading, weights redrawn (He normal, seed {s['random_seed']}) from `predictions` down; "
        f"Spearman of |heat map| (a map that becomes constant: ρ = 0); the verdict from ρ once the dense layers "
        f"are random, drawn {s.get('verdict_draws', 1)} times (seeds {s['random_seed']} onwards): 'pass' if for every "
        f"draw the whole 95 % interval of ρ over images lies below 0.5, 'fail' if for every draw it lies at or above, "
        f"'unclear' otherwise",
        f"- costly methods: integrated_gradients steps={s['ig_steps']}, smoothgrad samples={s['smoothgrad_samples']}, "
        f"occlusion patch={s['occlusion_patch']} stride={s['occlusion_stride']}; `gradcam_block4`: Grad-CAM at "
        f"`{s['gradcam_fine_layer']}`; peak in border: within {s['border']} px of the edge",
    ]
    return "\n".join(lines)


def write_json(results, path):
    """results as JSON (infinities written as strings, so that any JSON reader takes the file)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, np.generic):
            return v.item()
        return v
    write_text(path, json.dumps(clean(results), indent=1) + "\n")


def write_report(results, examples, out):
    """Write benchmark.md, results.json and the figures into `out`; returns the localisation table."""
    out = Path(out)
    write_text(out / "benchmark.md", report_text(results))
    write_json(results, out / "results.json")
    plot_curves(results, out / "curves.png")
    plot_randomisation(results, out / "randomisation.png")
    plot_examples(examples, out / "examples.png")
    if examples.get("pairs", {}).get("maps"):
        plot_pairs(examples["pairs"], out / "pairs.png")
    if "selection" in results:
        plot_selection(results["selection"], out / "selection.png")
        plot_tradeoff(results["selection"], out / "tradeoff.png")
    return main_table(results)


def report_text(results):
    """The Markdown report of a run, from its results (as returned, or as read back from results.json)."""
    main = main_table(results)
    c = results["centre"]
    sigmas = [float(s) for s in c["validation_mass"]]  # (keys: strings once read back from JSON)
    parts = [f"# Benchmark: {results['model']}", "",
             f"Command: `{results.get('command', 'fbi_ref.evaluation.benchmark.evaluate(...)')}`  ",
             f"Top-1 accuracy on the test images: {results['accuracy']:.3f}. Run time: {results['seconds']:.0f} s "
             f"({results['cpu_seconds']:.0f} s CPU; stages: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_seconds"].items()) + ").", "",
             "## Localisation, and the wrong-class control (test set)", "", main, "",
             "## Class discrimination and faithfulness (test set)", "", metric_table(results, DISCRIMINATION), "",
             "## Randomisation verdict, where the peak lies, sparsity, time (test set)", "",
             metric_table(results, OTHER), "",
             "Each row's options: " + "; ".join(
                 f"`{n}`: {options_text(results['metrics'][n]['options'], DEFAULTS if results['metrics'][n]['method'] == 'fbi' else None)}"
                 for n in results["rows"]) + f". The centre's sigma ({c['sigma']:g} px) has the highest mass on the "
             "validation images among " + ", ".join(f"{s:g}" for s in sigmas) + " px"
             + (" (an end of that list)" if c["sigma"] in (min(sigmas), max(sigmas)) else "") + ".", ""]
    if results.get("comparisons"):
        parts += ["## `fbi` against the others, image by image (test set)", "", comparison_table(results), ""]
    if "selection" in results:
        parts += selection_text(results["selection"])
    if "fbi_vs_deconvnet" in results:
        d = results["fbi_vs_deconvnet"]
        parts += ["## FBI with k = 100 % and no threshold vs DeconvNet", "",
                  f"Heat maps of FBI ({options_text(d['options'])}, the paper's readings) against DeconvNet's, mean "
                  f"over the test images: Pearson {cell('r', d['pearson'])}, Spearman {cell('r', d['spearman'])}.", ""]
    parts += ["## Randomisation cascade (Spearman of |heat map|, mean over the first images)", "",
              randomisation_table(results), "",
              "## Randomisation verdict by weight draw (ρ once the dense layers are random)", "",
              verdict_table(results), "", "## Settings", "", settings_text(results["settings"]), ""]
    return "\n".join(parts)


def write_selection(sel, settings, command, out):
    """Write selection.md, selection.json and selection.png for a selection-only run."""
    out = Path(out)
    text = ["# FBI's settings for this model", "", f"Command: `{command}`", ""] + selection_text(sel) \
        + ["## Settings", "", settings_text(settings), ""]
    write_text(out / "selection.md", "\n".join(text))
    write_json({"fbi_defaults": sel["chosen"], "selection": sel, "settings": settings}, out / "selection.json")
    plot_selection(sel, out / "selection.png")
    plot_tradeoff(sel, out / "tradeoff.png")


def line_style(names):
    """{name: plot kwargs}: a distinct colour per method (tab20), FBI rows drawn thicker."""
    colours = colormap("tab20").colors
    return {name: {"color": colours[i % len(colours)], "lw": 2.2 if name.startswith("fbi") else 1.0}
            for i, name in enumerate(names)}


def plot_curves(results, path):
    """Mean deletion and insertion curves per method."""
    fig = new_figure((12.5, 4))
    axes = fig.subplots(1, 2)
    style = line_style(results["rows"])
    for ax, key in zip(axes, ("deletion", "insertion")):
        for name in results["rows"]:
            curve = results["metrics"][name][f"{key}_curve"]
            ax.plot(np.linspace(0, 1, len(curve)), curve, label=name, **style[name])
        ax.set_xlabel(f"fraction of pixels {'removed' if key == 'deletion' else 'inserted'}")
        ax.set_ylabel("target probability")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    save(fig, path)


def plot_randomisation(results, path):
    """Spearman correlation after each cascade step, per method."""
    r = results["randomisation"]
    fig = new_figure((12.5, 4.5))
    ax = fig.subplots()
    style = line_style(results["rows"])
    for name in r["rho"]:
        ax.plot(range(len(r["layers"])), r["rho"][name], marker="o", ms=3, label=name, **style[name])
    ax.set_xticks(range(len(r["layers"])), r["layers"], rotation=60, ha="right", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("Spearman ρ of |heat map| with the original")
    ax.set_title("cascading randomisation (from the top)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save(fig, path)


def plot_selection(sel, path):
    """Left: the score over the k x tau grid (the paper's readings); right: the first round's change of
    mass and of class-conditional pointing for every one-option change (the ablation)."""
    rows = sel["sweep"]
    ks, taus = sorted({r["options"]["k"] for r in rows}), sorted({r["options"]["tau"] for r in rows})
    grid = np.full((len(ks), len(taus)), np.nan)
    for r in rows:
        grid[ks.index(r["options"]["k"]), taus.index(r["options"]["tau"])] = r["score"]
    fig = new_figure((14, 5.5))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    im = left.imshow(grid, cmap="viridis", aspect="auto")
    left.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    left.set_yticks(range(len(ks)), [f"{k:g}" for k in ks])
    left.set_xlabel(f"τ ({rows[0]['options']['tau_mode']})")
    left.set_ylabel("k")
    left.set_title("score with the paper's readings (validation)")
    add_colorbar(left, im, "score")
    if not sel["rounds"]:
        right.axis("off")
        right.set_title("no round of option changes (--rounds 0)")
        fig.tight_layout()
        save(fig, path)
        return
    first = sel["rounds"][0]
    base = first["from"]
    for r in first["rows"]:
        dx, dy = r["mass"] - base["mass"], r["class_pointing"] - base["class_pointing"]
        right.scatter(dx, dy, s=14, color="tab:blue" if r["gain"] > 0 else "tab:grey")
        right.annotate(r["change"], (dx, dy), fontsize=6, xytext=(3, 2), textcoords="offset points")
    right.axhline(0, color="grey", lw=0.8)
    right.axvline(0, color="grey", lw=0.8)
    right.set_xlabel("change of relevance mass")
    right.set_ylabel("change of class-conditional pointing")
    right.set_title("round 1: each option changed alone (blue: the score rises)")
    right.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def plot_tradeoff(sel, path):
    """Precision against coverage on the validation set: relevance mass (x) and relevance rank accuracy (y) of
    every FBI setting the selection tried, coloured by class-conditional pointing, with the chosen setting, the
    paper's readings and the baselines (guided backprop, guided Grad-CAM) as reference points."""
    tried = list(sel["sweep"]) + [row for r in sel["rounds"] for row in r["rows"]]
    tried = [r for r in tried if "rank" in r]
    fig = new_figure((7.5, 6))
    ax = fig.subplots()
    dots = ax.scatter([r["mass"] for r in tried], [r["rank"] for r in tried], c=[r["class_pointing"] for r in tried],
                      cmap="viridis", s=18, vmin=0.5, vmax=1.0)
    add_colorbar(ax, dots, "class-conditional pointing")
    chosen = [r for r in tried if r["options"] == sel["chosen"]][:1]
    readings = [r for r in sel["sweep"] if r["options"] == {**r["options"], **sel["paper_readings"]}][:1]
    for rows, label, marker in ((chosen, "fbi (chosen)", "*"), (readings, "fbi_paper_readings", "s")):
        for r in rows:
            ax.scatter(r["mass"], r["rank"], marker=marker, s=160, facecolors="none", edgecolors="red")
            ax.annotate(label, (r["mass"], r["rank"]), fontsize=8, xytext=(-10, -4), textcoords="offset points",
                        ha="right", color="red")
    for name, r in sel.get("baselines", {}).items():
        ax.scatter(r["mass"], r["rank"], marker="D", s=50, color="black")
        ax.annotate(name, (r["mass"], r["rank"]), fontsize=8, xytext=(-8, 4), textcoords="offset points", ha="right")
    ax.set_xlabel("relevance mass (precision) ↑")
    ax.set_ylabel("relevance rank accuracy (coverage) ↑")
    ax.set_title("every FBI setting tried (validation)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def plot_examples(examples, path):
    """The first test images with their mask outline, and each method's heat map with its colour bar."""
    names, n = list(examples["maps"]), len(examples["images"])
    fig = new_figure((1.5 * (len(names) + 1), 1.6 * n))
    axes = fig.subplots(n, len(names) + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(examples["images"][i])
        axes[i, 0].contour(examples["masks"][i], levels=[0.5], colors="yellow", linewidths=0.8)
        for j, name in enumerate(names, start=1):
            show_map(axes[i, j], examples["maps"][name][i], colorbar=True, fontsize=5, kind_label=True)
            axes[i, j].contour(examples["masks"][i], levels=[0.5], colors="cyan", linewidths=0.5)
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    save(fig, path)


def plot_pairs(pairs, path):
    """Pair images, and for a few rows the heat map explaining each object's class (outlines: yellow the
    asked object, cyan the other): a class-sensitive map moves with the class asked."""
    names, n = list(pairs["maps"]), len(pairs["images"])
    fig = new_figure((1.45 * (1 + 2 * len(names)), 1.6 * n))
    axes = fig.subplots(n, 1 + 2 * len(names), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(pairs["images"][i])
        for j, name in enumerate(names):
            for side, (asked, other) in enumerate(((pairs["masks"], pairs["other_masks"]),
                                                   (pairs["other_masks"], pairs["masks"]))):
                ax = axes[i, 1 + 2 * j + side]
                show_map(ax, pairs["maps"][name][side][i], colorbar=True, fontsize=5, kind_label=True)
                ax.contour(asked[i], levels=[0.5], colors="yellow", linewidths=0.8)
                ax.contour(other[i], levels=[0.5], colors="cyan", linewidths=0.8)
                if i == 0:
                    ax.set_title(f"{name}\n{'A' if side == 0 else 'B'} asked", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    save(fig, path)
