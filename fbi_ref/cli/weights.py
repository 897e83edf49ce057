"""`fbi-ref weights`: fetch, list and verify model weights (the cache of known files and the embedded models)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fbi_ref.cli.args import emit, emit_json, file_size, positive_number, say
from fbi_ref.errors import InputError
from fbi_ref.io import weights_cache
from fbi_ref.io.paths import input_file, shown
from fbi_ref.io.zoo import embedded_models


def run_weights_fetch(args):
    """Download known weights into the cache (or keep the cached file if its MD5 matches)."""
    path = weights_cache.fetch_weights(args.name, force=args.force, url=args.url, progress=not args.quiet,
                                       deadline=args.deadline)
    say(args, f"{args.name}: {path} ({weights_cache.known_file(args.name).checksum} verified)")
    return 0


def weights_table():
    """One record per known weights file (cached or not) and per embedded model."""
    rows = []
    for name, known in weights_cache.KNOWN_WEIGHTS.items():
        path = weights_cache.cached_weights(name)
        md5, sha256 = weights_cache.digests(path) if path else (None, None)
        row = {"name": name, "kind": "official", "path": str(path or weights_cache.weights_file(name)), "cached": bool(path),
               "size": path and path.stat().st_size, "md5": md5, "expected_md5": known.md5}
        if path and known.sha256_prefix:  # torchvision's files: their name carries a SHA-256 prefix
            row.update(sha256=sha256, expected_sha256_prefix=known.sha256_prefix)
        row["status"] = "missing" if not path else "ok" if known.matches(md5, sha256) else "MISMATCH"
        rows.append(row)
    for name, path in embedded_models().items():
        expected = manifest_sha256(path)
        md5, sha = weights_cache.digests(path)
        rows.append({"name": name, "kind": "embedded", "path": str(path), "cached": True,
                     "size": path.stat().st_size, "md5": md5, "sha256": sha, "expected_sha256": expected,
                     "status": "ok" if expected in (None, sha) else "MISMATCH"})
    return rows


def run_weights_list(args):
    """The official weights (cached or missing) and the embedded models, with sizes and hashes."""
    rows = weights_table()
    if args.json:
        emit_json({"cache": str(weights_cache.weights_dir()), "models": rows})
    elif args.quiet:
        for row in rows:
            if row["cached"]:
                emit(row["name"])
    else:
        emit(f"cache: {weights_cache.weights_dir()}")
        emit(f"{'name':<17} {'kind':<9} {'status':<9} {'size':>9}  {'md5':<32}  path")
        for r in rows:
            size = file_size(r["path"]) if r["cached"] else "-"
            hint = "" if r["cached"] else f"   (fbi-ref weights fetch {r['name']})"
            emit(f"{r['name']:<17} {r['kind']:<9} {r['status']:<9} {size:>9}  {r['md5'] or '-':<32}  {r['path']}{hint}")
    return 0


def manifest_sha256(path):
    """The SHA-256 an embedded model's manifest (NAME.json beside NAME.h5) announces, or None."""
    manifest = path.with_suffix(".json")
    try:
        return json.loads(manifest.read_text()).get("sha256")
    except (ValueError, AttributeError) as e:
        raise InputError(f"{manifest}: not a valid manifest ({e})") from None



def verify_record(target):
    """Hash a known name's cached file, an embedded model, or any file; compare with the expected hash if any."""
    known, embedded_sha256 = None, None
    if target in weights_cache.KNOWN_WEIGHTS:
        known = weights_cache.known_file(target)
        path = weights_cache.weights_path(target)
    elif target in embedded_models():
        path = embedded_models()[target]
        embedded_sha256 = manifest_sha256(path)
    else:
        path = Path(target)
        if not path.exists():
            names = ", ".join([*weights_cache.KNOWN_WEIGHTS, *embedded_models()])
            raise InputError(f"{shown(target)}: no such file, and not a known weights name ({names})")
        path = input_file(path, "weights file")  # a FIFO or a device would be read forever
        known = {k.filename: k for k in weights_cache.KNOWN_WEIGHTS.values()}.get(path.name)
    md5, sha256 = weights_cache.digests(path)
    record = {"path": str(path), "size": path.stat().st_size, "md5": md5, "sha256": sha256}
    if known is not None:  # Keras's files: an MD5; torchvision's: the SHA-256 prefix their names carry
        kind, value = ("md5", known.md5) if known.md5 else ("sha256_prefix", known.sha256_prefix)
        record.update(expected_hash=kind, expected=value, ok=known.matches(md5, sha256))
    elif embedded_sha256:
        record.update(expected_hash="sha256", expected=embedded_sha256, ok=sha256 == embedded_sha256.lower())
    return record


def run_weights_verify(args):
    """Check a file's hash against the registry (exit 1 on a mismatch), or print its MD5 and SHA-256."""
    record = verify_record(args.target)
    ok = record.get("ok", True)
    if args.json:
        emit_json(record)
    elif not args.quiet:
        emit(f"{record['path']}\n  md5    {record['md5']}\n  sha256 {record['sha256']}")
        if "expected" in record:
            verdict = "OK" if ok else "MISMATCH"
            emit(f"  {verdict}: expected {record['expected_hash']} {record['expected']}")
    return 0 if ok else 1


def register(sub, command_parser):
    """Add `weights` (fetch, list, verify) to the subcommands."""
    p = sub.add_parser("weights", help="the weights cache: fetch, list, verify",
                       description="Download, list and check model weights (fbi-ref weights ACTION --help).",
                       epilog="examples:\n  fbi-ref weights fetch vgg16\n  fbi-ref weights list --json\n"
                              "  fbi-ref weights verify ~/Downloads/vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    w = command_parser(weights, "fetch", "download known weights into the cache, checking their hash",
                       f"Download {', '.join(weights_cache.KNOWN_WEIGHTS)} into the cache ($FBI_REF_HOME/weights, "
                       "default ~/.cache/fbi_ref/weights), with a progress bar; the hash (Keras's MD5, the SHA-256 "
                       "prefix of torchvision's file names) is checked before the file is put in place.", "fbi-ref weights fetch vgg16")
    w.add_argument("name", choices=list(weights_cache.KNOWN_WEIGHTS), metavar="NAME", help=", ".join(weights_cache.KNOWN_WEIGHTS))
    w.add_argument("--url", help="download from this address instead (a mirror); the MD5 is still checked")
    w.add_argument("--deadline", type=positive_number, default=weights_cache.DEFAULT_DEADLINE, metavar="SECONDS",
                   help=f"give up when the download takes longer (default {weights_cache.DEFAULT_DEADLINE:g})")
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
