"""The figure commands of `fbi-ref`: demo, explain, layers, sweep."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from fbi_ref.cli import stream
from fbi_ref.cli.args import (add_fbi_options, add_model, add_options, add_target, add_tau_mode, bar, figure_path,
                              image_files, int_between, load_model, method_list, method_options, model_file,
                              number_list, output_folder,
                              process_age, say, tau_list)
from fbi_ref.errors import InputError
from fbi_ref.io.arrays import write_npz
from fbi_ref.io.paths import output_file, shown
from fbi_ref.io.images import preprocess_caffe, preprocess_image
from fbi_ref.methods.explain import explain
from fbi_ref.shapes import CLASSES, generate

DEMO_METHODS = ("fbi", "guided_backprop", "deconvnet", "gradient", "gradcam")
MAX_MAPS = 16  # per row of the layers figure: VGG16's walk has 23 rows


def save_figure(args, fig, path, announce=True):
    """Write a figure (creating its folder) and, unless told not to, say where."""
    from fbi_ref.figures import save
    output_folder(Path(path).parent)
    save(fig, path)
    if announce:
        say(args, f"wrote {path}")
    return path


def inputs_of(args, images=()):
    """The files a command reads (its images and its model's file), which no output may overwrite."""
    return [p for p in [*images, model_file(args.model)] if p is not None]


# --- demo ------------------------------------------------------------------------------------

def run_demo(args):
    """Shapes images explained by the embedded model, one row per image, one column per method."""
    from fbi_ref.figures import comparison_figure  # matplotlib: imported only by the commands that draw
    out = figure_path(args.out, inputs_of(args))
    model = load_model(args.model)
    height, width, _ = model.input_shape
    if height != width:
        raise InputError(f"the demo draws square Shapes images; {model.name} expects {height}x{width}")
    batch = generate(args.n, seed=args.seed, size=height)  # image i shows class i % 6
    x = preprocess_caffe(batch.images.astype(np.float32))  # (N, H, W, 3)
    explanations = {m: explain(model, x, m) for m in bar(args, DEMO_METHODS, "methods", "method")}
    labels = [f"true: {CLASSES[label]}" for label in batch.labels]
    title = f"fbi-ref demo: {model.name} on {args.n} Shapes images (seed {args.seed})"
    save_figure(args, comparison_figure(x, explanations, model.class_names, labels, title), out)
    return 0


# --- explain ---------------------------------------------------------------------------------

def run_explain(args):
    """One Table-1 style figure per image (and with --save-npz the arrays); in batches with the batch options."""
    files = image_files(args.images)
    options = method_options(args, args.method)
    out = output_folder(args.out, create=False)  # created with the first figure, not by a run that fails
    plan = explain_outputs(files, out, args.save_npz, inputs_of(args, files))  # checked before any work
    if stream.batch_run(args):
        stream.scheduler_available(args)
        args.options = options
        model = stream.worker_model(args.model)  # cached: with --jobs 1 the batches use this very copy
        return stream.stream_explain(args, plan, model, inputs_of(args, files), indexed=True)
    model = load_model(args.model)
    for path, png, npz in bar(args, plan, "explaining", "image"):
        x = preprocess_image(path, model.input_shape, preprocessing=model.preprocessing)  # (1, H, W, 3), as fbi_ref.load_image
        started = process_age()
        e = {m: explain(model, x, m, target=args.target, **options[m]) for m in args.method}
        if args.timings:
            print(f"fbi-ref: {shown(path.name)}: explaining started {started:.2f} s after the process started and "
                  f"took {process_age() - started:.2f} s", file=sys.stderr)
        from fbi_ref.figures import explanation_figure, prediction_text  # after explaining: matplotlib takes a while
        written = [save_figure(args, explanation_figure(x, e, model.class_names, name=shown(path.name),
                                                         preprocessing=model.preprocessing), png,
                               announce=False)]
        if npz is not None:
            written.append(write_npz(npz, stream.explanation_arrays(x, e, model, shown(path.name))))
        prediction = prediction_text(next(iter(e.values())), 0, model.class_names)
        say(args, f"{path}: {prediction} -> {', '.join(map(str, written))}")
    return 0


def explain_outputs(files, out, save_npz, inputs):
    """[(image, figure path, .npz path or None)], every output checked against every input before any work."""
    plan, stems = [], set()
    for path in files:
        stem = _unique(path.stem, stems)
        png = output_file(out / f"{stem}_explain.png", inputs)
        npz = output_file(out / f"{stem}_explain.npz", inputs) if save_npz else None
        plan.append((path, png, npz))
    return plan


def _unique(stem, taken):
    """A file stem not used yet in this run (two cat.jpg from two folders: cat, cat_2)."""
    candidate, i = stem, 1
    while candidate in taken:
        i += 1
        candidate = f"{stem}_{i}"
    taken.add(candidate)
    return candidate


# --- layers ----------------------------------------------------------------------------------

def run_layers(args):
    """FBI's walk as pictures: the support and strongest backward maps at every position."""
    from fbi_ref.figures import layer_gallery
    out = figure_path(args.out, inputs_of(args, [args.image]))
    model = load_model(args.model)
    x = preprocess_image(args.image, model.input_shape, preprocessing=model.preprocessing)
    e = explain(model, x, "fbi", target=args.target, record_layers=True, **method_options(args, ["fbi"])["fbi"])
    save_figure(args, layer_gallery(x, e, args.maps, class_names=model.class_names), out)
    return 0


# --- sweep -----------------------------------------------------------------------------------

def run_sweep(args):
    """FBI over a grid of k and tau."""
    from fbi_ref.figures import sweep_figure
    out = figure_path(args.out, inputs_of(args, [args.image]))
    model = load_model(args.model)
    x = preprocess_image(args.image, model.input_shape, preprocessing=model.preprocessing)
    mode = args.tau_mode or "absolute"
    taus = args.tau or ([0.0, 0.01, 0.1, 0.5] if mode == "relative" else [-math.inf, 1.0, 10.0, 100.0])
    cells = [(k, tau) for k in args.k for tau in taus]
    results, first = {}, None
    for k, tau in bar(args, cells, "sweep", "cell"):
        e = explain(model, x, "fbi", target=args.target, k=k, tau=tau, tau_mode=mode)
        results[(k, tau)], first = e.attribution[0], first or e
    save_figure(args, sweep_figure(x, results, args.k, taus, mode, model.class_names, first), out)
    return 0


# --- registration ----------------------------------------------------------------------------

def register(sub, command_parser):
    """Add demo, explain, layers and sweep to the subcommands."""
    p = command_parser(sub, "demo", "explain a few Shapes images with the embedded model (nothing to download)",
                       "Generate Shapes images (fixed seed), explain them with FBI, guided backprop, DeconvNet, "
                       "gradient and Grad-CAM, and write one figure: a row per image, a column per method.",
                       "fbi-ref demo --out demo.png")
    p.add_argument("--out", default="demo.png", help="the figure to write (default demo.png)")
    add_model(p, default="shapes")
    p.add_argument("--n", type=int_between(1, 64), default=6, help="how many images, 1 to 64 (default 6: one of each class)")
    p.add_argument("--seed", type=int, default=0, help="the Shapes seed (default 0)")
    p.set_defaults(run=run_demo)

    p = command_parser(sub, "explain", "one figure per image: the input, then each method (the paper's Table 1)",
                       "Explain images with one or more methods and write one figure per image (the predicted "
                       "class and its probability in the title). Folders expand to the image files in them.",
                       "fbi-ref explain cat.jpg photos/ --model vgg16 --method fbi,guided_backprop --out out/")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    add_model(p)
    p.add_argument("--method", type=method_list, default=list(DEMO_METHODS), metavar="M1,M2,...|all",
                   help=f"methods, in columns (default {','.join(DEMO_METHODS)})")
    add_target(p)
    add_fbi_options(p)
    add_options(p)
    p.add_argument("--out", default="explanations", metavar="DIR", help="output folder (default explanations/)")
    p.add_argument("--save-npz", action="store_true", help="also write the arrays: NAME_explain.npz")
    p.add_argument("--timings", action="store_true",
                   help="say on stderr when each explanation started (seconds after process start) and its time")
    stream.add_batch_options(p, 1)
    p.set_defaults(run=run_explain)

    p = command_parser(sub, "layers", "FBI's walk as pictures: support and backward maps at every layer",
                       "Show, from the top layer down to the image, FBI's support (what the masks keep) and "
                       "the strongest backward maps at every position of the walk.",
                       "fbi-ref layers cat.jpg --model vgg16 --out layers.png")
    p.add_argument("image", metavar="IMAGE")
    add_model(p)
    add_target(p)
    add_fbi_options(p)
    p.add_argument("--maps", type=int_between(1, MAX_MAPS), default=4,
                   help=f"backward maps shown per layer, 1 to {MAX_MAPS} (default 4)")
    p.add_argument("--out", default="layers.png", help="the figure to write (default layers.png)")
    p.set_defaults(run=run_layers, option=[])

    p = command_parser(sub, "sweep", "FBI over a grid of k (rows) and tau (columns)",
                       "Run FBI for every pair of k and tau and show the results as a grid.",
                       "fbi-ref sweep cat.jpg --k 0.1,0.25,0.5,1.0 --tau none,1,10,100")
    p.add_argument("image", metavar="IMAGE")
    add_model(p)
    add_target(p)
    p.add_argument("--k", type=number_list, default=[0.1, 0.25, 0.5, 1.0], metavar="K1,K2,...",
                   help="rows: fractions in (0, 1] or counts of maps (default 0.1,0.25,0.5,1.0)")
    p.add_argument("--tau", type=tau_list, default=None, metavar="T1,T2,...", help="columns: thresholds, none for "
                   "no mask (default none,1,10,100; relative: 0,0.01,0.1,0.5)")
    add_tau_mode(p)
    p.add_argument("--out", default="sweep.png", help="the figure to write (default sweep.png)")
    p.set_defaults(run=run_sweep)
    return sub

