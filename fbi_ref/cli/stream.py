"""Batch runs of `fbi-ref explain` and `fbi-ref reference`: images of any number, in batches, resumable.

The images are split into batches of --batch-size; each batch is a task (a module-level function below) run in
this process, on --jobs worker processes (fbi_ref/evaluation/workers.py) or on a Dask cluster (--scheduler,
fbi_ref/evaluation/scheduler.py). This process reads and preprocesses the images and writes every batch's
outputs as soon as it comes back, so at most a window of batches (twice the workers) is in memory at once:
the memory bound of docs/datasets.md. Every output is written to a temporary file and renamed into place;
a reference folder's index (fbi_ref/reference/shards.py) and explain's index (INDEX_NAME) record a batch only
once its files are complete, with their SHA-256, and --resume skips exactly those.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.cli.args import int_between, model_file, output_folder, process_age, say
from fbi_ref.errors import InputError
from fbi_ref.evaluation.scheduler import dask_distributed, run_batches, scheduler, worker_model
from fbi_ref.evaluation.workers import cpu_count
from fbi_ref.io.arrays import write_npz
from fbi_ref.io.images import preprocess_image
from fbi_ref.io.paths import shown, write_atomically, write_text
from fbi_ref.io.weights_cache import md5sum, sha256sum
from fbi_ref.methods.explain import explain
from fbi_ref.nn.activations import softmax
from fbi_ref.reference import shards
from fbi_ref.reference.build import build_reference, plain, stable_json

INDEX_NAME = "explain-index.json"
SHARD_FILE = re.compile(r"shard-\d{5}\.npz")


# --- options ---------------------------------------------------------------------------------

def add_batch_options(parser, batch_default):
    """--batch-size, --jobs, --threads, --scheduler and --resume."""
    parser.add_argument("--batch-size", type=int_between(1, 1024), default=None, metavar="N",
                        help=f"images per batch: a task, a shard (default {batch_default})")
    parser.add_argument("--jobs", type=int_between(1, 256), default=1, metavar="N",
                        help="worker processes on this machine (default 1: this process); with --scheduler local, "
                             "the LocalCluster's workers (default 2)")
    parser.add_argument("--threads", type=int_between(1, 256), default=None, metavar="N",
                        help="BLAS and numba threads per batch (default: the cores / jobs; 1 on a scheduler); "
                             "results are the same bytes for the same batch size and threads, wherever they ran")
    parser.add_argument("--scheduler", default=None, metavar="local|tcp://HOST:8786",
                        help="run the batches on a Dask cluster: 'local' starts a LocalCluster, an address joins "
                             "a running scheduler (needs the optional extra: pip install 'fbi_ref[dask]')")
    parser.add_argument("--resume", action="store_true",
                        help="skip the batches an interrupted run of the same command completed")


def batch_run(args):
    """True when a batch option was given (else the command runs exactly as before them)."""
    return any(getattr(args, name, None) not in (None, False, 1) for name in
               ("batch_size", "threads", "scheduler", "resume")) or getattr(args, "jobs", 1) > 1


def threads_of(args):
    """BLAS and numba threads per task: --threads, else the cores shared out between the workers."""
    if args.threads:
        return args.threads
    return 1 if args.scheduler else max(1, cpu_count() // args.jobs)


def scheduler_available(args):
    """Before any work: --scheduler needs dask.distributed (an InputError naming the extra otherwise)."""
    if args.scheduler:
        dask_distributed()


def cluster(args):
    """The Dask client of --scheduler (None: the local pool), as a context manager."""
    jobs = args.jobs if args.jobs > 1 else 2
    return scheduler(args.scheduler, jobs, threads_of(args))


def spans(n, size):
    """[(start, stop)] of consecutive batches of `size` over n items."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def progress(args, total, done, desc):
    """A progress bar over images, with rate and ETA (on a terminal, unless --quiet)."""
    return tqdm(total=total, initial=done, desc=desc, unit="image", disable=True if args.quiet else None,
                leave=False, dynamic_ncols=True)


def digest_of(items):
    """A SHA-256 of a list of strings: which inputs a run is over, in the index without listing them all."""
    return hashlib.sha256("\n".join(items).encode("utf-8", "surrogateescape")).hexdigest()


# --- reference -------------------------------------------------------------------------------

def model_record(path):
    """The model file's name and hashes for meta, computed once per run (not once per batch)."""
    if path is None or not Path(path).is_file():
        return {"file": None, "md5": None, "sha256": None}
    return {"file": Path(path).name, "md5": md5sum(path), "sha256": sha256sum(path)}


def reference_batch(spec, x, methods, target, options, with_weights, record):
    """build_reference of one batch x (B, H, W, C) with the model `spec` (loaded once per worker)."""
    model = worker_model(spec)
    arrays = build_reference(model, x, methods, target, options, None, with_weights)
    meta = json.loads(str(arrays["meta"]))
    meta["model"].update(record)  # what build_reference writes for a model file, without hashing it per batch
    arrays["meta"] = np.array(stable_json(meta))
    return arrays


def stream_reference(args, model, sources, load_batch, out, is_folder, inputs):
    """Write the reference of every batch: to a shard folder (streamed, resumable; returns (folder, index)) or,
    for one .npz, return (None, the whole reference) to write."""
    size = args.batch_size or 8
    batches = spans(len(sources), size)
    record = model_record(args.model_path)
    run = {"model": args.model, "model_sha256": record["sha256"], "methods": list(args.methods),
           "options": plain(args.options), "target": plain(args.target), "with_weights": args.with_weights,
           "batch_size": size, "threads": threads_of(args), "inputs": digest_of([shown(s) for s in sources])}
    folder = out if is_folder else None
    if folder is None and args.resume:
        raise InputError(f"{shown(out)}: --resume needs a folder output (--out DIR), whose shards a run can resume")
    found = check_folder(folder, run, args.resume) if folder else None
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(cluster(args))  # before any write: nothing is written if no scheduler answers
        index, done = start_folder(folder, found, run, len(sources), size, args.resume) if folder else (None, {})
        todo = [n for n in range(len(batches)) if n not in done]
        tasks = ((args.model, load_batch(*batches[n]), args.methods, args.target, args.options, args.with_weights,
                  record) for n in todo)
        kept = {}
        bar = stack.enter_context(progress(args, len(sources), sum(e["stop"] - e["start"] for e in done.values()),
                                           "reference"))
        for i, arrays in run_batches(reference_batch, tasks, client, args.jobs, threads_of(args)):
            n = todo[i]
            if folder is None:
                kept[n] = arrays
            else:
                path = write_npz(folder / shards.shard_name(n), arrays, inputs)
                shards.write_index(folder, shards.record_shard(index, n, *batches[n], path))
            bar.update(batches[n][1] - batches[n][0])
    if folder is not None:
        return folder, index
    return None, shards.concatenate_batches([kept[n] for n in range(len(batches))])


def check_folder(folder, run, resume):
    """Before anything is written: the shard index to continue (checked against this run's settings) or None
    for a fresh run, which a folder of anybody else's files refuses (InputError)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{shown(folder)}: exists and is not a folder; a reference of several batches is a folder "
                         "(give --out NAME.npz for a single file)")
    has_index = (folder / shards.INDEX).exists()
    if not has_index:
        if folder.is_dir() and any(folder.iterdir()):
            raise InputError(f"{shown(folder)}: a folder that holds other files and no {shards.INDEX}; give a new "
                             f"or empty folder")
        return None
    try:  # ours only if it is an index of our shards with a run's settings; anybody's else is not ours
        index = shards.read_index(folder)
    except InputError as error:
        raise InputError(f"{error}; {shown(folder)} is not a folder of fbi-ref reference shards: give a new or "
                         f"empty folder") from None
    if not isinstance(index.get("run"), dict):
        raise InputError(f"{shown(folder / shards.INDEX)}: an index without a run's settings; give a new or "
                         f"empty folder")
    if resume:
        same_run(index, run, folder)
    return index


def start_folder(folder, found, run, images, size, resume):
    """The index to write to and {shard number: entry} already complete: `found` (check_folder's) continued with
    --resume, else a new index, the old run's shards removed so that none is mistaken for this run's."""
    output_folder(folder)
    if resume and found is not None:
        good = shards.verified_shards(folder, found)
        found["shards"] = [e for e in found["shards"] if e["number"] in good]
        return found, good
    if found is not None:
        for path in folder.iterdir():
            if SHARD_FILE.fullmatch(path.name) and path.is_file():
                path.unlink()
    index = shards.new_index(run, images, size)
    shards.write_index(folder, index)
    return index, {}


# --- explain ---------------------------------------------------------------------------------

def explain_batch(spec, x, names, methods, target, options, save_npz):
    """Explain one batch x (B, H, W, C) with every method and draw each image's figure (PNG bytes): a list of
    per-image records {png, arrays, prediction, started, seconds}."""
    from fbi_ref.figures import explanation_figure, prediction_text, save  # matplotlib: only where a figure is drawn
    model = worker_model(spec)
    started = process_age()
    explained = {m: explain(model, x, m, target=target, **options[m]) for m in methods}
    seconds = process_age() - started
    out = []
    for i, name in enumerate(names):
        one = {m: _row(e, i) for m, e in explained.items()}
        png = io.BytesIO()
        save(explanation_figure(x[i:i + 1], one, model.class_names, name=name, preprocessing=model.preprocessing), png)
        arrays = explanation_arrays(x[i:i + 1], one, model, name) if save_npz else None
        out.append({"png": png.getvalue(), "arrays": arrays, "started": started, "seconds": seconds,
                    "prediction": prediction_text(next(iter(one.values())), 0, model.class_names)})
    return out


def _row(e, i):
    """The Explanation of image i of a batch's Explanation (a batch of one)."""
    sliced = {f: getattr(e, f)[i:i + 1] for f in ("attribution", "heatmap", "target", "probability", "logits")}
    return replace(e, **sliced, backward=None, support=None)


def explanation_arrays(x, explanations, model, name):
    """x, logits, probs, target, attr/<method>, heatmap/<method> and a meta record: explain's .npz."""
    first = next(iter(explanations.values()))
    arrays = {"x": x, "logits": first.logits, "probs": softmax(first.logits), "target": first.target}
    arrays.update({f"attr/{m}": e.attribution for m, e in explanations.items()})
    arrays.update({f"heatmap/{m}": e.heatmap for m, e in explanations.items()})
    meta = {"image": name, "model": model.name, "layout": "NHWC",
            "methods": {m: plain(e.options) for m, e in explanations.items()}}
    arrays["meta"] = np.array(stable_json(meta))
    return arrays


def stream_explain(args, plan, model, inputs, indexed):
    """Explain every image of `plan` [(image, figure path, .npz path or None)] batch by batch; with `indexed`,
    record each finished image in OUT/explain-index.json, which --resume reads."""
    out = Path(args.out)
    # the model file's hash, as reference's run records it: a file replaced at the same path is another run
    run = {"model": args.model, "model_sha256": model_record(model_file(args.model))["sha256"],
           "methods": list(args.method), "options": plain(args.options),
           "target": plain(args.target), "batch_size": args.batch_size or 1, "threads": threads_of(args),
           "save_npz": bool(args.save_npz), "inputs": digest_of([shown(p) for p, _, _ in plan])}
    index = explain_index(out, run, args.resume) if indexed else None
    todo = [item for item in plan if not finished(item, index, args.resume)]
    if len(todo) < len(plan):
        say(args, f"resuming: {len(plan) - len(todo)} of {len(plan)} images already explained")
    batches = [todo[a:b] for a, b in spans(len(todo), args.batch_size or 1)]
    tasks = ((args.model, np.concatenate([preprocess_image(p, model.input_shape, preprocessing=model.preprocessing)
                                          for p, _, _ in batch]),
              [shown(p.name) for p, _, _ in batch], args.method, args.target, args.options, bool(args.save_npz))
             for batch in batches)
    with cluster(args) as client, progress(args, len(plan), len(plan) - len(todo), "explaining") as bar:
        for i, records in run_batches(explain_batch, tasks, client, args.jobs, threads_of(args)):
            for (path, png, npz), record in zip(batches[i], records):
                write_explained(args, path, png, npz, record, inputs, index)
                bar.update()
            if index is not None:  # once per batch: an interrupted batch's images are simply explained again
                write_text(out / INDEX_NAME, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return 0


def write_explained(args, path, png, npz, record, inputs, index):
    """Write one image's figure (and arrays), say so, and record it in the index."""
    output_folder(png.parent)
    written = [write_atomically(png, lambda f: f.write(record["png"]), inputs)]
    if npz is not None:
        written.append(write_npz(npz, record["arrays"], inputs))
    if args.timings:
        print(f"fbi-ref: {shown(path.name)}: explaining started {record['started']:.2f} s after the process "
              f"started and took {record['seconds']:.2f} s", file=sys.stderr)
    if index is not None:
        index["done"][png.name] = {"source": shown(path), "files": {p.name: sha256sum(p) for p in written}}
    say(args, f"{path}: {record['prediction']} -> {', '.join(map(str, written))}")


def explain_index(out, run, resume):
    """explain's index in OUT: the one to continue (same settings) with --resume, else a new one."""
    path = out / INDEX_NAME
    if resume and path.is_file():
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{shown(path)}: not a valid index ({e})") from None
        done = index.get("done") if isinstance(index, dict) else None
        if not isinstance(done, dict) or not all(isinstance(e, dict) and isinstance(e.get("files"), dict)
                                                 for e in done.values()):
            raise InputError(f"{shown(path)}: not an index of fbi-ref explain (each entry of 'done' is "
                             f"{{\"source\": ..., \"files\": {{name: sha256}}}})")
        same_run(index, run, out)
        return index
    return {"format": "fbi_ref explain run", "run": run, "done": {}}


def same_run(index, run, folder):
    """--resume continues only the run its index records: InputError naming the settings that differ."""
    recorded = index.get("run") if isinstance(index.get("run"), dict) else {}
    if recorded != run:
        changed = sorted(k for k in {**run, **recorded} if run.get(k) != recorded.get(k))
        raise InputError(f"{shown(folder)}: was started with other settings ({', '.join(changed)} differ); resume "
                         "it with the same command, or write to another folder")


def finished(item, index, resume):
    """With --resume: True when every output of an image is complete (in the index with its SHA-256, or,
    without an index, simply present: every output is renamed into place only once written in full)."""
    if not resume:
        return False
    _, png, npz = item
    files = [p for p in (png, npz) if p is not None]
    if index is None or not index["done"]:
        return all(p.is_file() for p in files)
    entry = index["done"].get(png.name)
    return bool(entry) and all(p.is_file() and entry["files"].get(p.name) == sha256sum(p) for p in files)
