"""`fbi-ref reference` and `fbi-ref compare`: reference files for checking another implementation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fbi_ref.cli.args import (add_fbi_options, add_options, add_target, emit, emit_json, file_size, image_files, load_model,
                              method_list, method_options, model_file, say)
from fbi_ref.errors import InputError
from fbi_ref.io.arrays import load_arrays, load_npz, write_npz
from fbi_ref.io.images import preprocess_image
from fbi_ref.io.paths import output_file
from fbi_ref.methods.explain import METHODS
from fbi_ref.reference.build import build_reference
from fbi_ref.reference.compare import compare, format_comparison


def reference_inputs(args, model):
    """The preprocessed batch: from --inputs (.npy, or .npz with key 'x') or from --images."""
    if args.images:
        return np.concatenate([preprocess_image(p, model.input_shape) for p in image_files(args.images)])
    data = load_arrays(args.inputs)
    if isinstance(data, dict):
        if "x" not in data:
            raise InputError(f"{args.inputs}: has no array 'x' (give a .npy of inputs, or an .npz with 'x')")
        return data["x"]
    return data


def run_reference(args):
    """Write every intermediate of the forward pass and of each method to one .npz."""
    sources = [args.inputs] if args.inputs else image_files(args.images)
    inputs = [p for p in [*sources, model_file(args.model)] if p is not None]
    output_file(args.out, inputs)  # before any work: never an input, a symlink or a special file
    model = load_model(args.model)
    x = reference_inputs(args, model)
    arrays = build_reference(model, x, args.methods, args.target, method_options(args, args.methods),
                             model_file(args.model), args.with_weights, progress=not args.quiet)
    path = write_npz(args.out, arrays, inputs)
    summary = {"path": str(path), "size": path.stat().st_size, "model": model.name, "methods": list(args.methods),
               "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}}
    if args.json:
        emit_json(summary)
    else:
        say(args, f"wrote {path}: {len(arrays)} arrays ({file_size(path)}), x {tuple(x.shape)}, "
                  f"{len(args.methods)} methods ({', '.join(args.methods)})")
    return 0


def run_compare(args):
    """Compare the arrays two reference files share; exit 1 when any differs."""
    ref, other = load_npz(args.ref), load_npz(args.other)
    result = compare(ref, other, args.rtol, args.atol, args.layout)
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
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="vgg16, vgg19, shapes or a .h5/.keras file")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--inputs", metavar="X.npy", help="preprocessed NHWC inputs (.npy, or .npz with 'x')")
    inputs.add_argument("--images", nargs="+", metavar="FILE", help="image files (or folders), preprocessed as Keras")
    p.add_argument("--out", default="reference.npz", help="the file to write (default reference.npz)")
    p.add_argument("--methods", type=method_list, default=list(METHODS), metavar="all|M1,M2,...",
                   help="methods to store (default all)")
    add_target(p)
    add_fbi_options(p)
    add_options(p)
    p.add_argument("--with-weights", action="store_true", help="also store every kernel and bias (w/<layer>/...)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(run=run_reference)

    p = command_parser(sub, "compare", "compare two reference files; name the first array that differs",
                       "For every array both files hold: the largest absolute and relative errors and pass/fail "
                       "(|other - ref| <= atol + rtol |ref| everywhere), and the first failing key in REF's order "
                       "(the forward pass layer by layer, then FBI's walk from the top). Exit 1 on any failure.",
                       "fbi-ref compare ref.npz mine.npz --layout nchw --rtol 1e-4")
    p.add_argument("ref", metavar="REF.npz")
    p.add_argument("other", metavar="OTHER.npz")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc",
                   help="nchw: transpose OTHER's 4-D arrays from NCHW first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run_compare)
