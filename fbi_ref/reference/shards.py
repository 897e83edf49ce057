"""A reference as a folder of shards: one .npz per batch of images plus an index, read as one reference.

    refdir/index.json           the run's settings and, per complete shard, its file, images and SHA-256
    refdir/shard-00000.npz      build_reference of images [0, B), exactly the format of a single file
    refdir/shard-00001.npz      images [B, 2B), ...

    with open_reference("refdir") as ref:    # or a single .npz: the same mapping either way
        ref["act/fc1"]                       # (N, ...) the shards' arrays concatenated along the batch axis

A shard is written to a temporary file and renamed into place (fbi_ref.io.arrays.write_npz), and only then
recorded in the index (itself replaced atomically), so a run killed at any moment leaves an index of complete
shards only; `--resume` checks each one's SHA-256 and redoes the rest. The index lists the shards in image
order; `w/` keys (the weights) come from the first shard, every other key but `meta` is per image and is
concatenated; `meta` is merged (merge_meta), and a single .npz built batch by batch gets the same merged meta,
so its arrays and the folder's are the same bytes.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.io.arrays import MAX_ARRAY_BYTES, open_npz
from fbi_ref.io.paths import input_file, shown, write_text
from fbi_ref.reference.build import read_meta, stable_json
from fbi_ref.io.weights_cache import sha256sum

INDEX = "index.json"
FORMAT = "fbi_ref reference shards"
FORMAT_VERSION = 1
MAX_INDEX_BYTES = 64 * 2**20  # an index of 100,000 shards takes about 20 MB


def shard_name(number):
    """The file name of shard `number`: shard-00012.npz."""
    return f"shard-{number:05d}.npz"


def per_image(key):
    """True for keys with one row per image (concatenated across shards): all but the weights and meta."""
    return key != "meta" and not key.startswith("w/")


# --- meta of several batches -----------------------------------------------------------------

def merge_meta(metas, sizes):
    """One meta JSON string for batches with meta JSON strings `metas` of `sizes` images each.

    One batch: its meta unchanged. Several: the first's, with near_ties summed over batches (a count of
    windows), warnings prefixed by the images they concern, and `batches`: the batch size and count.
    """
    records = [read_meta(m, f"{i} of {len(metas)}") for i, m in enumerate(metas)]  # checked, even when there is one
    if len(metas) == 1:
        return metas[0]
    merged = dict(records[0])
    ties = {}
    for record in records:
        for pool, counts in record.get("near_ties", {}).items():
            total = ties.setdefault(pool, {k: 0 for k in counts})
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
    merged["near_ties"] = ties
    starts = np.cumsum([0, *sizes])
    merged["warnings"] = [f"images {starts[i]}-{starts[i + 1] - 1}: {w}" for i, record in enumerate(records)
                          for w in record.get("warnings", [])]
    merged["batches"] = {"size": int(sizes[0]), "count": len(sizes)}
    return stable_json(merged)


def concatenate_batches(batches):
    """One reference {key: array} from the {key: array} of consecutive batches (the same keys in each)."""
    first = batches[0]
    out = {}
    for key in first:
        if key == "meta":
            out[key] = np.array(merge_meta([str(b["meta"]) for b in batches], [len(b["x"]) for b in batches]))
        elif per_image(key):
            out[key] = np.concatenate([b[key] for b in batches])
        else:
            out[key] = first[key]
    return out


# --- the index -------------------------------------------------------------------------------

def read_index(folder):
    """The index of a shard folder as a dict (InputError if missing or not an index)."""
    path = Path(folder) / INDEX
    path = input_file(path, "shard index")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise InputError(f"{shown(path)}: {path.stat().st_size:,} bytes, more than an index may take")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{shown(path)}: not a valid index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("shards"), list):
        raise InputError(f"{shown(path)}: not an index of fbi_ref reference shards")
    if Path(folder, INDEX).is_symlink():
        raise InputError(f"{shown(path)}: a symbolic link; an index must be a file of its folder")
    fields = {"number": int, "file": str, "start": int, "stop": int, "sha256": str}
    for entry in index["shards"]:
        if not isinstance(entry, dict) or any(type(entry.get(k)) is not t for k, t in fields.items()) \
                or not 0 <= entry["start"] <= entry["stop"]:
            raise InputError(f"{shown(path)}: a shard entry {str(entry)[:80]} is not "
                             "{number, file, start <= stop, sha256}")
    if type(index.get("images")) is not int or not isinstance(index.get("run", {}), dict):
        raise InputError(f"{shown(path)}: 'images' must be a count and 'run' a record of the run's settings")
    return index


def check_coverage(index, name):
    """A complete index's shards must cover images 0..images once each, in order, with distinct numbers."""
    shards = sorted(index["shards"], key=lambda s: s["start"])
    stops = [0] + [s["stop"] for s in shards]
    if [s["start"] for s in shards] != stops[:-1] or stops[-1] != index["images"] \
            or len({s["number"] for s in shards}) != len(shards):
        raise InputError(f"{name}: the index's shards do not cover its {index['images']} images once each, in "
                         "order; rerun the command with --resume")


def write_index(folder, index):
    """Replace the index atomically (a reader sees the old one or the new one, never half of one)."""
    return write_text(Path(folder) / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")


def new_index(run, images, batch_size):
    """An index with no shard yet: the run's settings, the number of images and the batch size."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "run": run, "images": int(images),
            "batch_size": int(batch_size), "shards": [], "complete": False}


def record_shard(index, number, start, stop, path):
    """Add a written shard (its SHA-256 read back from disk) to the index, kept in image order."""
    entry = {"number": number, "file": Path(path).name, "start": int(start), "stop": int(stop),
             "sha256": sha256sum(path)}
    index["shards"] = sorted([s for s in index["shards"] if s["number"] != number] + [entry],
                             key=lambda s: s["start"])
    index["complete"] = sum(s["stop"] - s["start"] for s in index["shards"]) == index["images"]
    return index


def verified_shards(folder, index):
    """The index's shards whose file exists with the recorded SHA-256 ({number: entry}); others are redone."""
    return {entry["number"]: entry for entry in index["shards"] if shard_intact(folder, entry)}


def shard_intact(folder, entry):
    """True when an index entry names a regular file of the folder itself (no path, no symbolic link) whose
    SHA-256 is the recorded one."""
    path = Path(folder) / entry["file"]
    return (Path(entry["file"]).name == entry["file"] and path.is_file() and not path.is_symlink()
            and sha256sum(path) == entry["sha256"])


# --- reading a folder as one reference -------------------------------------------------------

def open_reference(path):
    """A reference file or shard folder as a read-only mapping of arrays (use it in a `with` block)."""
    return ShardedReference(path) if Path(path).is_dir() else open_npz(path)


class ShardedReference(Mapping):
    """The shards of a complete reference folder as one {key: array} mapping, each array read when asked
    (each shard is opened for the read and closed after it: a folder may hold more shards than a process may
    keep files open)."""

    def __init__(self, folder):
        self.folder, self.name = Path(folder), shown(folder)
        index = read_index(folder)
        if not index.get("complete"):
            done = sum(s["stop"] - s["start"] for s in index["shards"])
            raise InputError(f"{self.name}: an unfinished reference ({done} of {index['images']} images); "
                             "finish it with the same command and --resume")
        check_coverage(index, self.name)
        self._paths, self._sizes = [], []
        for entry in sorted(index["shards"], key=lambda s: s["start"]):
            path = self.folder / entry["file"]
            if not shard_intact(self.folder, entry):
                raise InputError(f"{self.name}: shard {shown(str(entry['file']))} is missing or does not match its "
                                 "SHA-256 in the index; rerun the command with --resume to rewrite it")
            self._paths.append(path)
            self._sizes.append(int(entry["stop"]) - int(entry["start"]))
        if not self._paths:
            raise InputError(f"{self.name}: a reference folder without shards")
        with open_npz(self._paths[0]) as first:
            self._keys = list(first)
        self._meta = None

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        if key == "meta":
            if self._meta is None:
                try:
                    self._meta = np.array(merge_meta([str(self._read(p, "meta")) for p in self._paths], self._sizes))
                except InputError as error:  # merge_meta names the batch: say which folder and shard
                    raise InputError(f"{self.name}: shard {error}") from None
            return self._meta
        if not per_image(key):
            return self._read(self._paths[0], key)
        parts, size = [], 0
        for path, rows in zip(self._paths, self._sizes):
            parts.append(self._read(path, key))
            if np.ndim(parts[-1]) == 0 or np.shape(parts[-1])[1:] != np.shape(parts[0])[1:]:
                raise InputError(f"{self.name}: shard {path.name} holds {key!r} of shape {np.shape(parts[-1])}, the "
                                 f"first shard of shape {np.shape(parts[0])}")
            if len(parts[-1]) != rows:
                raise InputError(f"{self.name}: shard {path.name} holds {len(parts[-1])} images of {key!r}, its "
                                 f"index says {rows}")
            size += parts[-1].nbytes
            if size > MAX_ARRAY_BYTES:
                raise InputError(f"{self.name}: {key} takes more than the {MAX_ARRAY_BYTES:,} bytes allowed at once "
                                 "over all shards (FBI_REF_MAX_ARRAY_BYTES); compare fewer images at a time")
        return np.concatenate(parts)

    def __contains__(self, key):
        return key in self._keys

    def declared_shape(self, key):
        """The shape of `key` over all shards, from the first shard's header and the index (nothing read)."""
        if key not in self._keys:
            raise KeyError(key)
        with open_npz(self._paths[0]) as first:
            shape = first.declared_shape(key)
        return (sum(self._sizes), *shape[1:]) if per_image(key) and len(shape) else tuple(shape)

    def _read(self, path, key):
        """One array of one shard."""
        with open_npz(path) as shard:
            if key not in shard:
                raise InputError(f"{self.name}: shard {path.name} has no array {key!r} (the first shard has)")
            return shard[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def close(self):
        """Nothing stays open between reads."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
