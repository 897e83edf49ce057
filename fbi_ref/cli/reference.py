"""`fbi-ref reference` and `fbi-ref compare`: reference files for checking another implementation."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from fbi_ref.cli import stream
from fbi_ref.cli.args import (add_fbi_options, add_options, add_target, emit, emit_json, file_size, image_files, load_model,
                              method_list, method_options, model_file, say, tolerance_value)
from fbi_ref.errors import InputError
from fbi_ref.io.arrays import load_arrays, write_npz
from fbi_ref.io.images import preprocess_image
from fbi_ref.io.paths import output_file
from fbi_ref.methods.explain import METHODS
from fbi_ref.reference.build import AUTO_WEIGHTS_BYTES, build_reference, stores_weights
from fbi_ref.reference.shards import open_reference
from fbi_ref.reference.compare import DEFAULT_TOLERANCE, compare, format_comparison


def compared_methods(text):
    """--methods of compare: method names as for `reference` (method_list), 'all' (every method of REF: None) or
    'none' (the forward pass only); an empty name is refused, not read as 'none'."""
    if text.strip() in ("all", "none"):
        return None if text.strip() == "all" else []
    if not all(name.strip() for name in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty method name: give M1,M2,... or none")
    return method_list(text)


def reference_inputs(args, model):
    """The preprocessed batch: from --inputs (.npy, or .npz with key 'x') or from --images."""
    if args.images:
        return np.concatenate([preprocess_image(p, model.input_shape, preprocessing=model.preprocessing) for p in image_files(args.images)])
    data = load_arrays(args.inputs)
    if isinstance(data, dict):
        if "x" not in data:
            raise InputError(f"{args.inputs}: has no array 'x' (give a .npy of inputs, or an .npz with 'x')")
        return data["x"]
    return data


def folder_output(out):
    """True when --out names a folder of shards: an existing folder, a name ending in '/', or a new name without
    suffix (anything else that exists, a file, a FIFO, a symlink, is an output file, checked as ever)."""
    text = str(out)
    exists = os.path.lexists(out)
    return Path(out).is_dir() and not Path(out).is_symlink() or text.endswith(("/", "\\")) or \
        (not Path(out).suffix and not exists)


def run_reference(args):
    """Write every intermediate of the forward pass and of each method to one .npz (or a folder of shards)."""
    files = None if args.inputs else image_files(args.images)
    sources = [args.inputs] if args.inputs else files
    inputs = [p for p in [*sources, model_file(args.model)] if p is not None]
    if stream.batch_run(args) or folder_output(args.out):
        return run_reference_batches(args, files, inputs)
    output_file(args.out, inputs)  # before any work: never an input, a symlink or a special file
    model = load_model(args.model)
    args.with_weights = stores_weights(model, args.with_weights)
    x = reference_inputs(args, model)
    arrays = build_reference(model, x, args.methods, args.target, method_options(args, args.methods),
                             model_file(args.model), args.with_weights, progress=not args.quiet)
    path = write_npz(args.out, arrays, inputs)
    return report_reference(args, path, arrays, x.shape)


def run_reference_batches(args, files, inputs):
    """The reference batch by batch (--batch-size, default 8): a folder of shards, resumable, or one .npz."""
    out, folder = Path(args.out), folder_output(args.out)
    if not folder:
        output_file(out, inputs)
    stream.scheduler_available(args)
    model = stream.worker_model(args.model)  # cached: with --jobs 1 the batches use this very copy
    args.options, args.model_path = method_options(args, args.methods), model_file(args.model)
    args.with_weights = stores_weights(model, args.with_weights)
    if files is not None:
        sources = files
        load = lambda a, b: np.concatenate([preprocess_image(p, model.input_shape, preprocessing=model.preprocessing) for p in files[a:b]])  # noqa: E731
    else:
        x = reference_inputs(args, model)  # (N, H, W, C): an array file is read whole
        sources = [f"{args.inputs}[{i}]" for i in range(len(x))]
        load = lambda a, b: x[a:b]  # noqa: E731
    done, result = stream.stream_reference(args, model, sources, load, out, folder, inputs)
    if not folder:
        path = write_npz(out, result, inputs)
        return report_reference(args, path, result, result["x"].shape)
    say(args, f"wrote {out}: {len(sources)} images in {len(result['shards'])} shards of up to "
              f"{result['batch_size']} ({out / 'index.json'})")
    if args.json:
        emit_json({"path": str(out), "images": len(sources), "shards": result["shards"], "model": model.name,
                   "methods": list(args.methods)})
    return 0


def report_reference(args, path, arrays, x_shape):
    """Print what a reference file holds (or its JSON summary), and its warnings on stderr."""
    meta = json.loads(str(arrays["meta"]))
    summary = {"path": str(path), "size": path.stat().st_size, "model": meta["model"]["name"], "methods": list(args.methods),
               "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
    summary["warnings"], summary["near_ties"] = meta["warnings"], meta["near_ties"]
    for warning in meta["warnings"]:  # on stderr, so that --json stays machine-readable
        if not args.quiet:
            print(f"fbi-ref reference: warning: {warning}: a port is barely checked there, and compare fails it "
                  f"unless --allow-empty (see meta.warnings)", file=sys.stderr)
    if meta["model"]["file"] and not any(k.startswith("w/") for k in arrays) and not args.quiet:
        print(f"fbi-ref reference: note: the file does not hold {meta['model']['file']}'s weights (too large, or "
              f"--no-weights): compare replays near ties only with --model {meta['model']['file']} "
              f"(sha256 {meta['model']['sha256']})", file=sys.stderr)
    if args.json:
        emit_json(summary)
    else:
        ties = {name: v["near"] for name, v in meta["near_ties"].items() if v["near"]}
        say(args, f"wrote {path}: {len(arrays)} arrays ({file_size(path)}), x {tuple(x_shape)}, "
                  f"{len(args.methods)} method{'s' if len(args.methods) > 1 else ''} ({', '.join(args.methods)})"
                  + (f"; near-tie max-pool windows (compare replays them): "
                     f"{', '.join(f'{k} {v}' for k, v in ties.items())}" if ties else ""))
    return 0


def run_compare(args):
    """Compare another implementation's file with a reference; exit 1 when anything differs."""
    model = load_model(args.model) if args.model else None
    with open_reference(args.ref) as ref, open_reference(args.other) as other:  # one array at a time; a folder of
        # shards reads as one reference
        result = compare(ref, other, dict(args.tol) or None, args.layout, args.require, args.ignore, model,
                         replay=not args.no_replay, methods=args.methods, allow_empty=args.allow_empty,
                         flatten=args.flatten)
    if args.json:
        emit_json({"ref": args.ref, "other": args.other, **result.to_dict()})
    elif not args.quiet:
        emit(format_comparison(result, Path(args.ref).name, Path(args.other).name))
    return 0 if result.passed else 1


def register(sub, command_parser):
    """Add `reference` and `compare` to the subcommands."""
    p = command_parser(sub, "reference", "write every intermediate a re-implementer needs to one .npz",
                       "Run the model and every method on a batch and store the input, every layer's output, the "
                       "logits, each method's attribution and FBI's walk (docs/reference-format.md). The file is "
                       "identical byte for byte on every run.",
                       "fbi-ref reference --model vgg16 --images cat.jpg dog.jpg --methods all --out ref.npz")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="vgg16, vgg19, shapes or a model file "
                   "(.h5, .keras, .weights.h5, .safetensors, .pth, .onnx)")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--inputs", metavar="X.npy", help="preprocessed NHWC inputs (.npy, or .npz with 'x')")
    inputs.add_argument("--images", nargs="+", metavar="FILE", help="image files (or folders), preprocessed as Keras")
    p.add_argument("--out", default="reference.npz", help="the file to write (default reference.npz), or a folder "
                   "(a name without suffix, or ending in /): one shard per batch and an index, streamed")
    p.add_argument("--methods", type=method_list, default=list(METHODS), metavar="all|M1,M2,...",
                   help="methods to store (default all)")
    add_target(p)
    add_fbi_options(p)
    add_options(p)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--with-weights", action="store_const", const=True, default=None,
                         help="store every kernel and bias (w/<layer>/...); by default they are stored when they "
                              f"take at most {AUTO_WEIGHTS_BYTES // 2**20} MiB, so that compare can replay near ties "
                              "without the model")
    weights.add_argument("--no-weights", dest="with_weights", action="store_const", const=False,
                         help="never store the weights")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    stream.add_batch_options(p, 8)
    p.set_defaults(run=run_reference)

    p = command_parser(sub, "compare", "check another implementation's arrays against a reference file",
                       "For every array both files hold: the error max|OTHER - REF| / max|REF| against a tolerance "
                       f"(default {DEFAULT_TOLERANCE:g}; integers and booleans must be equal), where the worst element "
                       "is, and the first failing key in REF's order (the forward pass layer by layer, then each "
                       "method's walk from the top). Max-pool winners, FBI masks and top-k choices that OTHER takes "
                       "differently where REF is within rounding of a tie are replayed, not failed "
                       "(docs/reference-format.md). A key REF does not have fails. Exit 1 on any failure.",
                       "fbi-ref compare ref.npz mine.npz --tol attr/=1e-3")
    p.add_argument("ref", metavar="REF.npz")
    p.add_argument("other", metavar="OTHER.npz")
    p.add_argument("--tol", type=tolerance_value, action="append", default=[], metavar="[PREFIX=]VALUE",
                   help=f"tolerance of max|OTHER - REF| / max|REF| (default {DEFAULT_TOLERANCE:g}, lrp_epsilon's keys "
                        "1e-3): VALUE alone for every key, PREFIX=VALUE for the keys starting with PREFIX (the "
                        "longest wins; it replaces every built-in tolerance under PREFIX); repeatable")
    p.add_argument("--layout", choices=("auto", "nhwc", "nchw"), default="auto",
                   help="OTHER's layout for 4-D arrays (default auto: from the shapes, else the values)")
    p.add_argument("--methods", type=compared_methods, default=None, metavar="M1,M2,...|all|none",
                   help="check only these methods of REF (default: all of them, and each must have a key in OTHER: "
                        "its attr/<method> or its walk); none: the forward pass only")
    p.add_argument("--allow-empty", action="store_true",
                   help="pass a method whose attribution in REF is all zero on every image (it checks nothing)")
    p.add_argument("--flatten", choices=("auto", "hwc", "chw"), default="auto",
                   help="the order of OTHER's flatten vectors (act/flatten, */backward/flatten) under NCHW: auto "
                        "(from the values), hwc (Keras's) or chw (torch's x.flatten(1))")
    p.add_argument("--require", action="append", default=[], metavar="PREFIX",
                   help="keys under PREFIX must be in OTHER (e.g. act/, attr/); repeatable")
    p.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                   help="keys under PREFIX may be in OTHER without being in REF; repeatable")
    p.add_argument("--model", metavar="NAME|PATH", help="REF's model, to replay near ties (default: REF's own "
                   "weights, or the model REF names)")
    p.add_argument("--no-replay", action="store_true", help="compare as stored: take no near-tie decision from OTHER")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run_compare)
