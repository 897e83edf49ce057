"""`fbi-ref evaluate`: the benchmark's command line (fbi_ref/evaluation/benchmark.py runs it)."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from fbi_ref.cli import voc
from fbi_ref.cli.args import OneLineParser, emit, model_file, option_value
from fbi_ref.errors import InputError
from fbi_ref.evaluation import benchmark
from fbi_ref.evaluation.benchmark import QUICK, ROWS, TAU_MODES, Settings, benchmark_model, evaluate, settings_dict, tune_fbi_defaults
from fbi_ref.evaluation.report import REPORT_FILES, SWEEP_FILES, write_report, write_selection
from fbi_ref.io.paths import output_file

HELP = {
    "kind": "kind of the single-object test and validation images",
    "n_test": "single-object test images (pointing, mass, rank accuracy, peak, sparsity, time)",
    "n_wrong": "the first test images also explained for a class they do not hold",
    "n_pairs": "two-object test images (class-conditional pointing, pair rank accuracy)", "n_curves": "test images for deletion / insertion",
    "n_random": "test images for the whole randomisation cascade",
    "n_verdict": "test images for the randomisation verdict (dense layers random)",
    "verdict_draws": "independent random weight draws of the dense layers for the randomisation verdict",
    "n_val": "validation single-object images", "n_val_pairs": "validation two-object images",
    "steps": "deletion / insertion steps",
    "deletion_baseline": "what removed pixels become", "insertion_baseline": "the image insertion starts from",
    "blur_sigma": "Gaussian sigma (px) of the 'blur' baseline", "tolerance": "pointing-game mask dilation (px)",
    "border": "a peak this close (px) to the edge counts as in the border band",
    "bootstrap": "bootstrap resamples for every 95 %% interval",
    "sweep_k": "FBI's k values (fractions of the channels)", "sweep_tau": "FBI's tau values",
    "centre_sigmas": "the centre baseline's sigmas (px) to choose from on the validation set",
    "gradcam_fine_layer": "the layer of the gradcam_block4 row",
    "jobs": "worker processes (the results do not depend on it)",
    "threads": "BLAS and numba threads per task (the last digits of float32 sums depend on it)",
}
CHOICES = {"kind": ("single", "distractor"), "deletion_baseline": ("mean", "blur"),
           "insertion_baseline": ("blur", "mean"), "sweep_tau_mode": TAU_MODES}


def float_list(text):
    """'0.1,0.25,1' -> (0.1, 0.25, 1.0); 'inf' and '-inf' allowed."""
    return tuple(float(v) for v in text.split(",") if v.strip())


def configure_parser(parser):
    """Add the benchmark's arguments to an argparse parser; returns the parser."""
    parser.add_argument("--model", default="shapes",
                        help="'shapes' (the embedded trained model), 'random' (the Shapes architecture with "
                             "random weights, for development) or the path of a Keras file")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of --model random")
    parser.add_argument("--out", type=Path, default=Path("out/evaluate"), help="output folder")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"comma-separated rows (default all: {', '.join(ROWS)})")
    parser.add_argument("--quick", action="store_true",
                        help="development sizes: " + ", ".join(f"{k.replace('_', '-')} "
                                                              f"{','.join(map(str, v)) if isinstance(v, tuple) else v}"
                                                              for k, v in QUICK.items()) + " (given sizes win)")
    parser.add_argument("--selection-only", action="store_true",
                        help="only choose FBI's settings on the validation set and print them")
    parser.add_argument("--no-sweep", action="store_true",
                        help="no selection: FBI uses --fbi-option or the model's defaults")
    parser.add_argument("--fbi-option", type=lambda text: option_value("fbi." + text), action="append", default=[],
                        metavar="NAME=VALUE", help="an FBI option without a selection, e.g. k=0.1 or "
                                                   "dense_bias=ignore; repeatable")
    parser.add_argument("--no-progress", "-q", "--quiet", action="store_true",
                        help="no progress bars (they appear only on a terminal anyway)")
    voc.configure_parser(parser)  # --dataset, --subset, --scheduler (fbi_ref/cli/voc.py)
    for f in fields(Settings):
        if f.name in ("fbi", "sweep", "progress"):
            continue
        flag, kind = "--" + f.name.replace("_", "-"), float_list if isinstance(f.default, tuple) else type(f.default)
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                            help=f"{HELP.get(f.name, f.name.replace('_', ' '))} (default {shown})")
    return parser


def parse_arguments(parser, argv):
    """Parse `fbi-ref evaluate` arguments; with --quick, the QUICK sizes are the defaults."""
    if "--quick" in argv:
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def settings_from_args(args):
    """The Settings of parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    fbi = {name: value for _, name, value in args.fbi_option}
    return Settings(**values, fbi=fbi, sweep=not args.no_sweep, progress=not args.no_progress)


def command_line(args):
    """The `fbi-ref evaluate` command that reproduces a run: the arguments that differ from the defaults."""
    defaults = vars(configure_parser(argparse.ArgumentParser()).parse_args([]))
    defaults.update(QUICK if args.quick else {})  # --quick itself stays: it differs from the default
    parts = ["fbi-ref evaluate"]
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if value == default or key == "no_progress":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif key == "fbi_option":
            parts += [f"--fbi-option {name}={v}" for _, name, v in value]
        else:
            parts.append(f"{flag} {','.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def run(args):
    """Run `fbi-ref evaluate` with parsed arguments; returns the exit code."""
    if args.dataset:  # the pointing game on a VOC-style folder, not the Shapes benchmark
        return voc.run_voc(args)
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        raise InputError(f"unknown method {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(ROWS)}")
    model = benchmark_model(args.model, args.model_seed)
    settings = settings_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SWEEP_FILES if args.selection_only else REPORT_FILES:  # before the run, not after five minutes
        output_file(args.out / name, [model_file(args.model)] if args.model != "random" else [])
    if args.selection_only:
        chosen, record = tune_fbi_defaults(model, settings)
        write_selection(record, settings_dict(settings), command_line(args), args.out)
        emit(json.dumps({"fbi_defaults": chosen}))
        return 0
    with voc.tasks_on(args.scheduler, settings.jobs, settings.threads):  # --scheduler: the tasks go to Dask
        results, examples = evaluate(model, settings, names)
    results["command"] = command_line(args)
    table = write_report(results, examples, args.out)
    emit(table)
    emit(f"FBI: {json.dumps(results['fbi_defaults'])}; {results['seconds']:.0f} s; written to {args.out}")
    return 0


def run_evaluate(args):
    """Parse the rest of the command line with configure_parser and run the benchmark."""
    parser = OneLineParser(prog="fbi-ref evaluate", description=benchmark.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    try:
        inner = parse_arguments(parser, args.rest)
    except SystemExit as e:  # its --help
        return e.code if isinstance(e.code, int) else 0
    return run(inner)


def register(sub, command_parser):
    """Add `evaluate` to the subcommands (it parses its own arguments: see configure_parser)."""
    p = sub.add_parser("evaluate", help="quantitative evaluation of the methods (see fbi-ref evaluate --help)",
                       add_help=False, description="Run the benchmark with the arguments that follow.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=run_evaluate, quiet=False)
