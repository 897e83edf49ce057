"""`fbi-ref evaluate --dataset VOC_FOLDER`: the pointing game on a VOC-style folder (fbi_ref/evaluation/voc.py),
and `--scheduler` for every evaluation (fbi_ref/evaluation/scheduler.py)."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from fbi_ref.cli.args import emit, model_file
from fbi_ref.errors import InputError
from fbi_ref.evaluation import voc
from fbi_ref.evaluation.benchmark import ROWS
from fbi_ref.evaluation.scheduler import dask_distributed, scheduler, worker_model
from fbi_ref.evaluation.workers import on_client
from fbi_ref.io.paths import output_file, write_text
from fbi_ref.methods.explain import METHODS

VOC_METHODS = (*METHODS, voc.CENTRE)
RESULT_FILES = ("pointing.md", "pointing.json")


def configure_parser(parser):
    """--dataset, --subset and --scheduler."""
    parser.add_argument("--dataset", type=Path, default=None, metavar="VOC_FOLDER",
                        help="play TorchRay's pointing game on a PASCAL VOC-style folder (JPEGImages/, Annotations/, "
                             "ImageSets/Main/test.txt) instead of the Shapes benchmark; --methods from "
                             f"{', '.join(VOC_METHODS)} (default all)")
    parser.add_argument("--subset", type=Path, default=None, metavar="FILE",
                        help="with --dataset: a subset of (image, class) pairs, e.g. TorchRay's "
                             "pointing_game_ebp_voc07_difficult.txt, scored in a second column")
    parser.add_argument("--classes", default=None, metavar="NAME,NAME,...|FILE",
                        help="with --dataset: the model's class names in output order, comma-separated or a text "
                             "file of one name per line (a fine-tune's file has none; the boxes' names must match)")
    parser.add_argument("--scheduler", default=None, metavar="local|tcp://HOST:8786",
                        help="run the tasks on a Dask cluster ('local': a LocalCluster of --jobs processes); needs "
                             "the optional extra: pip install 'fbi_ref[dask]'")


@contextlib.contextmanager
def tasks_on(spec, jobs, threads):
    """Within the block the benchmark's tasks run on the Dask scheduler `spec` (None: the local pool)."""
    if spec:
        dask_distributed()  # the one-line error about the extra, before any work
    with scheduler(spec, max(jobs, 1), threads) as client, on_client(client):
        yield


def voc_methods(text, default_text):
    """The methods of --methods for the pointing game (the benchmark's default list stands for all of them)."""
    if text == default_text:
        return list(VOC_METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VOC_METHODS]
    if unknown or not names:
        raise InputError(f"unknown method {unknown[0] if unknown else '(none)'!r} for --dataset; choose from "
                         f"{', '.join(VOC_METHODS)}")
    return list(dict.fromkeys(names))


MAX_CLASSES_BYTES = 2**20


def given_class_names(text, model):
    """--classes: names separated by commas, or a file of one name per line; one per output of the model."""
    path = Path(text)
    if path.is_file():
        with open(path, "rb") as file:
            data = file.read(MAX_CLASSES_BYTES + 1)
        if len(data) > MAX_CLASSES_BYTES:
            raise InputError(f"--classes {text}: more than {MAX_CLASSES_BYTES:,} bytes, not a list of class names")
        try:
            names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise InputError(f"--classes {text}: not UTF-8 text") from None
    else:
        names = [name.strip() for name in text.split(",")]
    if len(names) != model.num_classes or not all(names) or len(set(names)) != len(names):
        raise InputError(f"--classes gives {len(names)} names ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); "
                         f"{model.name} has {model.num_classes} outputs, and each needs one distinct name")
    return names


def strict(value):
    """A result as strict JSON values: NaN and infinities (an empty class's accuracy) as null."""
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def method_options(args):
    """The options of the methods that take a size (the benchmark's flags), and --fbi-option."""
    return {"integrated_gradients": {"steps": args.ig_steps}, "smoothgrad": {"samples": args.smoothgrad_samples},
            "occlusion": {"patch": args.occlusion_patch, "stride": args.occlusion_stride},
            "fbi": {name: value for _, name, value in args.fbi_option}}


def run_voc(args):
    """The pointing game of every method on --dataset (and --subset); writes pointing.md and pointing.json."""
    methods = voc_methods(args.methods, ",".join(ROWS))
    if args.model == "random":
        raise InputError("--dataset needs a model name or file (random weights have no classes to point at)")
    if args.scheduler:
        dask_distributed()
    for name in RESULT_FILES:  # before the run
        output_file(args.out / name, [p for p in [model_file(args.model)] if p is not None])
    model = worker_model(args.model)
    class_names = given_class_names(args.classes, model) if args.classes else model.class_names
    if not class_names:
        raise InputError(f"{model.name} has no class names: the pointing game matches them with the boxes' names "
                         f"(give them with --classes)")
    options = {m: o for m, o in method_options(args).items() if m in methods}
    with scheduler(args.scheduler, max(args.jobs, 2) if args.scheduler == "local" else args.jobs,
                   args.threads) as client:
        result = voc.evaluate_voc(args.model, args.dataset, methods, list(class_names), args.subset, options,
                                  args.batch_size, client, args.jobs, args.threads, args.bootstrap,
                                  not args.no_progress)
    result.update(model=model.name, dataset=str(args.dataset), subset_file=str(args.subset) if args.subset else None,
                  options=options)
    args.out.mkdir(parents=True, exist_ok=True)
    text = voc.table(result)
    write_text(args.out / "pointing.md", f"# Pointing game: {model.name} on {args.dataset}\n\n{text}\n")
    write_text(args.out / "pointing.json", json.dumps(strict(result), indent=1, sort_keys=True, default=str,
                                                      allow_nan=False) + "\n")
    emit(text)
    emit(f"written to {args.out}")
    return 0
