"""The 1000 ImageNet classes: output index -> (WordNet id, name), as Keras numbers them.

imagenet_classes.json (beside this module) is byte-for-byte Keras's imagenet_class_index.json (MD5
c2c37ea517e94d9795004a39431a14cb, the hash keras.applications checks it against).
Two names are shared by two classes each: 'crane' (134 the bird, 517 the machine) and
'maillot' (638, 639); look those up by WordNet id.
"""
from __future__ import annotations

import difflib
import json
from importlib.resources import files

import numpy as np

from fbi_ref.errors import InputError

NUM_CLASSES = 1000


def _load_classes() -> tuple[tuple[str, str], ...]:
    """Read the packaged JSON {"0": [wnid, name], ...} into a tuple indexed by class."""
    text = files("fbi_ref.io").joinpath("imagenet_classes.json").read_text("utf-8")
    table = json.loads(text)
    return tuple((table[str(i)][0], table[str(i)][1]) for i in range(len(table)))


# CLASSES[i] == (wnid, name) of output i, e.g. CLASSES[0] == ('n01440764', 'tench').
CLASSES = _load_classes()


def class_name(index: int) -> str:
    """The name of class `index` (0..999), e.g. class_name(0) == 'tench'.

    Raises InputError for anything but an integer in 0..999.
    """
    return CLASSES[_checked_index(index)][1]


def class_wnid(index: int) -> str:
    """The WordNet id of class `index` (0..999), e.g. class_wnid(0) == 'n01440764'.

    Raises InputError for anything but an integer in 0..999.
    """
    return CLASSES[_checked_index(index)][0]


def class_index(name_or_wnid: str) -> int:
    """The index of a class given by WordNet id ('n01440764') or name ('tench').

    Names match ignoring case, with spaces standing for underscores ('Golden Retriever').
    Raises InputError for an unknown name (suggesting close ones) and for the two names
    that belong to two classes ('crane', 'maillot'), listing their WordNet ids.
    """
    if name_or_wnid in _BY_WNID:
        return _BY_WNID[name_or_wnid]
    key = _normal(name_or_wnid)
    matches = _BY_NAME.get(key, [])
    if len(matches) == 1:
        return matches[0]
    if matches:
        options = ", ".join(f"{i} ({CLASSES[i][0]})" for i in matches)
        raise InputError(f"{name_or_wnid!r} names {len(matches)} ImageNet classes: {options};"
                         f" pass the WordNet id instead")
    close = difflib.get_close_matches(key, _BY_NAME, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"unknown ImageNet class {name_or_wnid!r}{hint}")


def decode_predictions(probs: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each row of probs (N, 1000) as (wnid, name, score), best first.

    Same output as keras.applications.imagenet_utils.decode_predictions. Raises InputError
    for a shape other than (N, 1000), non-finite values, or top outside 1..1000.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or probs.dtype.kind not in "uif":
        raise InputError(f"probs must be a (N, {NUM_CLASSES}) numeric array, got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise InputError("probs contains NaN or infinite values")
    if not isinstance(top, (int, np.integer)) or not 1 <= top <= NUM_CLASSES:
        raise InputError(f"top must be an integer in 1..{NUM_CLASSES}, got {top!r}")
    return [_decode_row(row, top) for row in probs]


def _decode_row(row: np.ndarray, top: int) -> list[tuple[str, str, float]]:
    """One row's best classes, picked and ordered exactly as Keras does."""
    best = row.argsort()[-top:][::-1]  # (top,)
    result = [CLASSES[i] + (float(row[i]),) for i in best]
    result.sort(key=lambda entry: entry[2], reverse=True)
    return result


def _checked_index(index) -> int:
    """index as an int in 0..999, or InputError."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"class index must be an integer, got {index!r}")
    if not 0 <= index < len(CLASSES):
        raise InputError(f"class index must be in 0..{len(CLASSES) - 1}, got {index}")
    return int(index)


def _normal(name: str) -> str:
    """A class name in lookup form: lower case, underscores for spaces."""
    return str(name).strip().lower().replace(" ", "_")


def _name_table() -> dict[str, list[int]]:
    """normalised name -> indices of the classes bearing it (two for 'crane' and 'maillot')."""
    table: dict[str, list[int]] = {}
    for i, (_, name) in enumerate(CLASSES):
        table.setdefault(_normal(name), []).append(i)
    return table


_BY_WNID = {wnid: i for i, (wnid, _) in enumerate(CLASSES)}
_BY_NAME = _name_table()
