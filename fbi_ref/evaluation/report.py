"""The benchmark's outputs: Markdown tables, results.json and PNG figures (matplotlib, Agg)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fbi_ref.io.paths import write_atomically, write_text

# (results key, column title) of the main table; arrows say which direction is better.
COLUMNS = [("pointing", "pointing ↑"), ("mass", "mass acc. ↑"), ("class_sensitivity", "class sens. ↑"),
           ("pair_rho", "pair ρ ↓"), ("deletion", "deletion AUC ↓"), ("insertion", "insertion AUC ↑"),
           ("rand_dense", "rand. ρ dense ↓"), ("rand_all", "rand. ρ all ↓"), ("sanity", "sanity"),
           ("zeros", "zeros % (attr.)"), ("support_zeros", "zeros % (map)"), ("ms", "ms / expl.")]
SWEEP_COLUMNS = [("pointing", "pointing ↑"), ("mass", "mass acc. ↑"), ("class_sensitivity", "class sens. ↑"),
                 ("pair_rho", "pair ρ ↓"), ("deletion", "deletion AUC ↓"), ("insertion", "insertion AUC ↑"),
                 ("zeros", "zeros % (attr.)"), ("support_zeros", "zeros % (map)"), ("score", "score ↑")]
PERCENT = ("zeros", "support_zeros")


# The files a run writes into its output folder (a sweep-only run: SWEEP_FILES).
REPORT_FILES = ("benchmark.md", "results.json", "curves.png", "randomisation.png", "examples.png", "sweep.png")
SWEEP_FILES = ("sweep.md", "sweep.json", "sweep.png")


def cell(key, value):
    """One table cell: percentages for the sparsity columns, 3 decimals, '–' for a missing value."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in PERCENT:
        return f"{100 * value:.1f}"
    if key == "ms":
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(header, rows):
    """A Markdown table from a header list and rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def options_text(options):
    """'k=0.5, tau=10.0, tau_mode=absolute' (or 'defaults')."""
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def main_table(results):
    """The main table: one row per method, the columns of COLUMNS."""
    rows = [[f"`{name}`"] + [cell(key, results["metrics"][name].get(key)) for key, _ in COLUMNS]
            for name in results["rows"]]
    return table(["method"] + [title for _, title in COLUMNS], rows)


def edge_note(sweep_rows, defaults):
    """A warning when the chosen k or tau is the smallest or largest value of the grid ('' otherwise)."""
    edges = [name for name in ("k", "tau") if len({r[name] for r in sweep_rows}) > 1
             and defaults[name] in (min(r[name] for r in sweep_rows), max(r[name] for r in sweep_rows))]
    return (f" Note: the chosen {' and '.join(edges)} lie{'s' if len(edges) == 1 else ''} on the edge of the grid; "
            f"a wider grid may score higher.") if edges else ""


def sweep_table(sweep_rows, defaults):
    """The sweep table: one row per (k, tau), the chosen one in bold."""
    out = []
    for r in sweep_rows:
        chosen = all(r[key] == defaults[key] for key in ("k", "tau", "tau_mode"))
        mark = (lambda s: f"**{s}**") if chosen else (lambda s: s)
        out.append([mark(f"{r['k']:g}"), mark(f"{r['tau']:g} ({r['tau_mode']})")]
                   + [mark(cell(key, r[key])) for key, _ in SWEEP_COLUMNS])
    return table(["k", "τ (mode)"] + [title for _, title in SWEEP_COLUMNS], out)


def randomisation_table(results):
    """Mean Spearman rank correlation of |heat map| after each cascade step (columns: the layers)."""
    r = results["randomisation"]
    rows = [[f"`{name}`"] + [cell("rho", v) for v in r["rho"][name]] for name in results["rows"]]
    return table(["method"] + [f"{name}" for name in r["layers"]], rows)


def settings_text(s, results=None):
    """The settings of a run as a bullet list."""
    lines = [
        f"- test set: `shapes.generate(n, seed={s['test_seed']}, kind)`: {s['n_test']} `{s['kind']}` images "
        f"(pointing game, relevance mass, sparsity, time), {s['n_pairs']} `pair` images (class sensitivity), "
        f"deletion / insertion on the first {s['n_curves']}, randomisation on the first {s['n_random']}",
        f"- validation set (FBI sweep only): seed {s['val_seed']}: {s['n_val']} `{s['kind']}` images, "
        f"{s['n_val_pairs']} `pair` images, deletion / insertion on the first {s['n_val_curves']}",
        "- explained class: the labelled object's class (ground truth), whatever the prediction",
        f"- pointing game tolerance: the mask dilated by a disk of radius {s['tolerance']:g} px",
        f"- deletion / insertion: {s['steps']} steps of 1/{s['steps']} of the pixels (all channels), ranked by heat "
        f"map, ties in a fixed pseudo-random order; deleted pixels become `{s['deletion_baseline']}`, insertion "
        f"starts from `{s['insertion_baseline']}` ('mean' = 0 in caffe space, the ImageNet mean colour; 'blur' = "
        f"Gaussian blur, sigma {s['blur_sigma']:g} px); AUC by the trapezoid rule over the fraction 0..1",
        f"- randomisation: cascading, weights redrawn (He normal, seed {s['random_seed']}) from `predictions` down; "
        f"Spearman of |heat map|; 'fail' if ρ ≥ 0.5 once the dense layers are random",
        f"- costly methods: integrated_gradients steps={s['ig_steps']}, smoothgrad samples={s['smoothgrad_samples']}, "
        f"occlusion patch={s['occlusion_patch']} stride={s['occlusion_stride']}",
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
    """Write benchmark.md, results.json and the figures into `out`; returns the main table."""
    out = Path(out)
    main = main_table(results)
    parts = [f"# Benchmark: {results['model']}", "",
             f"Command: `{results.get('command', 'fbi_ref.evaluate.evaluate(...)')}`  ",
             f"Top-1 accuracy on the test images: {results['accuracy']:.3f}. Run time: {results['seconds']:.0f} s "
             f"({results['cpu_seconds']:.0f} s CPU; stages: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_seconds"].items()) + ").", "",
             "## Test set", "", main, "", "Each row's options: " + "; ".join(
                 f"`{n}`: {options_text(results['metrics'][n]['options'])}" for n in results["rows"]), ""]
    if "sweep" in results:
        parts += ["## FBI sweep (validation set)", "", sweep_table(results["sweep"], results["fbi_defaults"]), "",
                  f"Chosen FBI defaults: `{json.dumps(results['fbi_defaults'])}`."
                  + edge_note(results["sweep"], results["fbi_defaults"]), ""]
    if "fbi_vs_deconvnet" in results:
        c = results["fbi_vs_deconvnet"]
        parts += ["## FBI with k = 100 % and no threshold vs DeconvNet", "",
                  f"Heat maps of FBI ({options_text(c['options'])}) against DeconvNet's, mean over the test images: "
                  f"Pearson {cell('r', c['pearson'])}, Spearman {cell('r', c['spearman'])}"
                  + (f" (tuned FBI: Pearson {cell('r', c['tuned_pearson'])}, Spearman {cell('r', c['tuned_spearman'])})"
                     if "tuned_pearson" in c else "") + ".", ""]
    parts += ["## Randomisation cascade (Spearman of |heat map|)", "", randomisation_table(results), "",
              "## Settings", "", settings_text(results["settings"]), ""]
    write_text(out / "benchmark.md", "\n".join(parts))
    write_json(results, out / "results.json")
    plot_curves(results, out / "curves.png")
    plot_randomisation(results, out / "randomisation.png")
    plot_examples(examples, out / "examples.png")
    if "sweep" in results:
        plot_sweep(results["sweep"], out / "sweep.png")
    return main


def write_sweep(rows, defaults, settings, command, out):
    """Write sweep.md, sweep.json and sweep.png for a sweep-only run."""
    out = Path(out)
    text = ["# FBI sweep (validation set)", "", f"Command: `{command}`", "", sweep_table(rows, defaults), "",
            f"Chosen FBI defaults: `{json.dumps(defaults)}`." + edge_note(rows, defaults), "", settings_text(settings), ""]
    write_text(out / "sweep.md", "\n".join(text))
    write_json({"fbi_defaults": defaults, "sweep": rows, "settings": settings}, out / "sweep.json")
    plot_sweep(rows, out / "sweep.png")


def save_png(plt, fig, path):
    """Write a figure as PNG atomically (never onto a symlink or special file) and close it."""
    try:
        write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def line_style(names, plt):
    """{name: plot kwargs}: a distinct colour per method (tab20), FBI rows drawn thicker."""
    colours = plt.get_cmap("tab20").colors
    return {name: {"color": colours[i % len(colours)], "lw": 2.2 if name.startswith("fbi") else 1.0}
            for i, name in enumerate(names)}


def plot_curves(results, path):
    """Mean deletion and insertion curves per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4))
    style = line_style(results["rows"], plt)
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
    save_png(plt, fig, path)


def plot_randomisation(results, path):
    """Spearman correlation after each cascade step, per method."""
    plt = pyplot()
    r = results["randomisation"]
    fig, ax = plt.subplots(figsize=(12.5, 4.5))
    style = line_style(results["rows"], plt)
    for name in results["rows"]:
        ax.plot(range(len(r["layers"])), r["rho"][name], marker="o", ms=3, label=name, **style[name])
    ax.set_xticks(range(len(r["layers"])), r["layers"], rotation=60, ha="right", fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("Spearman ρ of |heat map| with the original")
    ax.set_title("cascading randomisation (from the top)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_png(plt, fig, path)


def plot_sweep(rows, path):
    """One k x tau grid per sweep metric."""
    plt = pyplot()
    ks, taus = sorted({r["k"] for r in rows}), sorted({r["tau"] for r in rows})
    keys = [key for key, _ in SWEEP_COLUMNS if key != "pair_rho"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, key in zip(axes.ravel(), keys):
        grid = np.full((len(ks), len(taus)), np.nan)
        for r in rows:
            grid[ks.index(r["k"]), taus.index(r["tau"])] = r[key]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
        ax.set_yticks(range(len(ks)), [f"{k:g}" for k in ks])
        ax.set_xlabel(f"τ ({rows[0]['tau_mode']})")
        ax.set_ylabel("k")
        ax.set_title(key)
        fig.colorbar(im, ax=ax)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    save_png(plt, fig, path)


def plot_examples(examples, path):
    """The first test images with their mask outline, and each method's heat map."""
    plt = pyplot()
    names, n = list(examples["maps"]), len(examples["images"])
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(1.5 * (len(names) + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(examples["images"][i])
        axes[i, 0].contour(examples["masks"][i], levels=[0.5], colors="yellow", linewidths=0.8)
        for j, name in enumerate(names, start=1):
            heat = examples["maps"][name][i]
            bound = max(float(np.abs(heat).max()), 1e-12)
            axes[i, j].imshow(heat, cmap="seismic", vmin=-bound, vmax=bound)
            axes[i, j].contour(examples["masks"][i], levels=[0.5], colors="black", linewidths=0.5)
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    save_png(plt, fig, path)
