"""The file commands of `fbi-ref`: weights (fetch, list, verify), reference, compare, and evaluate."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from . import fetch
from .cli_args import add_fbi_options, add_options, add_target, method_list, method_options, say
from .cli_commands import image_files, load_model
from .errors import InputError
from .explain import METHODS


def emit_json(record):
    """Print a record as JSON on stdout (for programs)."""
    print(json.dumps(record, indent=2, sort_keys=True))


def file_size(path):
    """A file size for people: '528.0 MB'."""
    size = float(Path(path).stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


# --- weights ---------------------------------------------------------------------------------

def run_weights_fetch(args):
    """Download known weights into the cache (or keep the cached file if its MD5 matches)."""
    path = fetch.fetch_weights(args.name, force=args.force, url=args.url, progress=not args.quiet)
    say(args, f"{args.name}: {path} (md5 {fetch.known_file(args.name).md5} verified)")
    return 0


def weights_table():
    """One record per known weights file (cached or not) and per embedded model."""
    from .zoo import embedded_models
    rows = []
    for name, known in fetch.KNOWN_WEIGHTS.items():
        path = fetch.cached_weights(name)
        row = {"name": name, "kind": "official", "path": str(path or fetch.weights_file(name)), "cached": bool(path),
               "size": path and path.stat().st_size, "md5": path and fetch.md5sum(path), "expected_md5": known.md5}
        row["status"] = "missing" if not path else "ok" if row["md5"] == known.md5 else "MISMATCH"
        rows.append(row)
    for name, path in embedded_models().items():
        expected = manifest_sha256(path)
        sha = sha256sum(path)
        rows.append({"name": name, "kind": "embedded", "path": str(path), "cached": True,
                     "size": path.stat().st_size, "md5": fetch.md5sum(path), "sha256": sha, "expected_sha256": expected,
                     "status": "ok" if expected in (None, sha) else "MISMATCH"})
    return rows


def run_weights_list(args):
    """The official weights (cached or missing) and the embedded models, with sizes and hashes."""
    rows = weights_table()
    if args.json:
        emit_json({"cache": str(fetch.weights_dir()), "models": rows})
    elif args.quiet:
        for row in rows:
            if row["cached"]:
                print(row["name"])
    else:
        print(f"cache: {fetch.weights_dir()}")
        print(f"{'name':<13} {'kind':<9} {'status':<9} {'size':>9}  {'md5':<32}  path")
        for r in rows:
            size = file_size(r["path"]) if r["cached"] else "-"
            hint = "" if r["cached"] else f"   (fbi-ref weights fetch {r['name']})"
            print(f"{r['name']:<13} {r['kind']:<9} {r['status']:<9} {size:>9}  {r['md5'] or '-':<32}  {r['path']}{hint}")
    return 0


def manifest_sha256(path):
    """The SHA-256 an embedded model's manifest (NAME.json beside NAME.h5) announces, or None."""
    manifest = path.with_suffix(".json")
    try:
        return json.loads(manifest.read_text()).get("sha256")
    except (ValueError, AttributeError) as e:
        raise InputError(f"{manifest}: not a valid manifest ({e})") from None


def sha256sum(path):
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(fetch.CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_record(target):
    """Hash a known name's cached file, an embedded model, or any file; compare with the expected hash if any."""
    from .zoo import embedded_models
    if target in fetch.KNOWN_WEIGHTS:
        path, expected = fetch.weights_path(target), ("md5", fetch.known_file(target).md5)
    elif target in embedded_models():
        path = embedded_models()[target]
        expected = ("sha256", manifest_sha256(path))
    else:
        path = Path(target)
        if not path.is_file():
            known = ", ".join([*fetch.KNOWN_WEIGHTS, *embedded_models()])
            raise InputError(f"{target}: no such file, and not a known weights name ({known})")
        by_file = {k.filename: k.md5 for k in fetch.KNOWN_WEIGHTS.values()}
        expected = ("md5", by_file.get(path.name))
    record = {"path": str(path), "size": path.stat().st_size, "md5": fetch.md5sum(path), "sha256": sha256sum(path)}
    kind, value = expected
    if value:
        record.update(expected_hash=kind, expected=value, ok=record[kind] == value.lower())
    return record


def run_weights_verify(args):
    """Check a file's hash against the registry (exit 1 on a mismatch), or print its MD5 and SHA-256."""
    record = verify_record(args.target)
    ok = record.get("ok", True)
    if args.json:
        emit_json(record)
    elif not args.quiet:
        print(f"{record['path']}\n  md5    {record['md5']}\n  sha256 {record['sha256']}")
        if "expected" in record:
            verdict = "OK" if ok else "MISMATCH"
            print(f"  {verdict}: expected {record['expected_hash']} {record['expected']}")
    return 0 if ok else 1


# --- reference and compare -------------------------------------------------------------------

def model_file(name):
    """The file a model name or path refers to (for the MD5 in meta)."""
    from .zoo import embedded_models
    if name in fetch.KNOWN_WEIGHTS:
        return fetch.weights_path(name)
    return embedded_models().get(name, Path(name))


def reference_inputs(args, model):
    """The preprocessed batch: from --inputs (.npy, or .npz with key 'x') or from --images."""
    if args.images:
        from .images import preprocess_image
        return np.concatenate([preprocess_image(p, model.input_shape) for p in image_files(args.images)])
    from .reference import load_arrays
    data = load_arrays(args.inputs)
    if isinstance(data, dict):
        if "x" not in data:
            raise InputError(f"{args.inputs}: has no array 'x' (give a .npy of inputs, or an .npz with 'x')")
        return data["x"]
    return data


def run_reference(args):
    """Write every intermediate of the forward pass and of each method to one .npz."""
    from .reference import build_reference, write_npz
    model = load_model(args.model)
    x = reference_inputs(args, model)
    arrays = build_reference(model, x, args.methods, args.target, method_options(args, args.methods),
                             model_file(args.model), args.with_weights, progress=not args.quiet)
    path = write_npz(args.out, arrays)
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
    from .reference import compare, format_comparison, load_npz
    ref, other = load_npz(args.ref), load_npz(args.other)
    result = compare(ref, other, args.rtol, args.atol, args.layout)
    if args.json:
        emit_json({"ref": args.ref, "other": args.other, **result.to_dict()})
    elif not args.quiet:
        print(format_comparison(result, Path(args.ref).name, Path(args.other).name))
    return 0 if result.passed else 1


# --- evaluate (fbi_ref/evaluate.py, imported on use) -----------------------------------------

def run_evaluate(args):
    """Hand the rest of the command line to fbi_ref.evaluate (configure_parser, run)."""
    from .cli import OneLineParser
    try:
        from . import evaluate_cli as evaluate
    except ModuleNotFoundError as e:
        if e.name not in (f"{__package__}.evaluate", f"{__package__}.evaluate_cli"):
            raise  # a missing dependency of evaluate.py itself: not ours to hide
        raise InputError("the evaluation module (fbi_ref/evaluate.py) is not part of this installation yet") from None
    parser = OneLineParser(prog="fbi-ref evaluate", description=evaluate.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.configure_parser(parser)
    try:
        inner = parser.parse_args(args.rest)
    except SystemExit as e:  # its --help
        return e.code if isinstance(e.code, int) else 0
    return evaluate.run(inner)


# --- registration ----------------------------------------------------------------------------

def register(sub, command_parser):
    """Add weights, reference, compare and evaluate to the subcommands."""
    p = sub.add_parser("weights", help="the weights cache: fetch, list, verify",
                       description="Download, list and check model weights (fbi-ref weights ACTION --help).",
                       epilog="examples:\n  fbi-ref weights fetch vgg16\n  fbi-ref weights list --json\n"
                              "  fbi-ref weights verify ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    w = command_parser(weights, "fetch", "download known weights into the cache, checking their MD5",
                       f"Download {', '.join(fetch.KNOWN_WEIGHTS)} into the cache ($FBI_REF_HOME/weights, "
                       "default ~/.cache/fbi_ref/weights), with a progress bar; the MD5 is checked before the file "
                       "is put in place.", "fbi-ref weights fetch vgg16")
    w.add_argument("name", choices=list(fetch.KNOWN_WEIGHTS), metavar="NAME", help=", ".join(fetch.KNOWN_WEIGHTS))
    w.add_argument("--url", help="download from this address instead (a mirror); the MD5 is still checked")
    w.add_argument("--force", action="store_true", help="download even if a verified copy is cached")
    w.set_defaults(run=run_weights_fetch)
    w = command_parser(weights, "list", "cached and embedded models with sizes and hashes",
                       "List the official weights (cached or missing) and the embedded models, with sizes and "
                       "hashes. -q prints only the names of the models available.", "fbi-ref weights list --json")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.set_defaults(run=run_weights_list)
    w = command_parser(weights, "verify", "check a weights file's hash (exit 1 on a mismatch)",
                       "Hash a cached model (by name) or any file (by path). Known files are checked against the "
                       "registry MD5 (exit 1 on a mismatch); others just get their MD5 and SHA-256 printed.",
                       "fbi-ref weights verify vgg16")
    w.add_argument("target", metavar="NAME|PATH")
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.set_defaults(run=run_weights_verify)

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

    p = sub.add_parser("evaluate", help="quantitative evaluation of the methods (see fbi-ref evaluate --help)",
                       add_help=False, description="Run fbi_ref.evaluate with the arguments that follow.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(run=run_evaluate, quiet=False)
