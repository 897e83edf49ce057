"""Comparing another implementation's arrays with a reference file, and naming the first key that differs.

    result = compare(load_npz("ref.npz"), load_npz("mine.npz"))           # layout detected, defaults below
    print(format_comparison(result))                                      # a table and a one-line verdict
    result.passed, result.first_divergence                                # e.g. False, 'act/fc1'

The measure. A float array passes when max|other - ref| / max|ref| <= its tolerance, taken image by image
(the first axis; the weights `w/...` as a whole): the error relative to that image's magnitude in the array,
so that an attribution of size 1e-3 and an activation of size 100 are held to the same standard, entries
that happen to be near zero do not dominate, and an image whose values are all small is not hidden by a
larger one. The default tolerance, DEFAULT_TOLERANCE
= 1e-4, holds a correct float32 port (its errors are ~1e-6 of the scale) and a float64 one (which differs by
the reference's own float32 rounding) while failing every planted bug of the test suite by orders of
magnitude; `tolerances` overrides it per key prefix ({"attr/": 1e-3}). Integer and boolean arrays (target,
switches, supports) must be equal, apart from near-tie decisions accepted by the replay (replay.py).

Keys. A key of `other` that the reference lacks fails (a misspelt key would otherwise check nothing), with
the nearest reference key suggested, unless it is under an `ignore` prefix; a reference key that `other`
lacks is listed, and fails only under a `require` prefix.

Methods. Every method of the reference must have a key in `other` (its attribution, or any key of its walk),
unless the check is restricted to some of them (`methods`): a port that left FBI out does not pass by
writing nothing for it. A method whose reference attribution is all zero on every image checks nothing (an
FBI walk emptied by its masks passes any port whose walk is empty too): it fails unless `allow_empty`, and
says from which position of its walk the reference is zero.

Flatten vectors. Under the NCHW layout, the vectors at a Flatten layer's output (`act/flatten`, the walks'
`*/backward/flatten`, FBI's `fbi/support/flatten`) may be in PyTorch's (C, H, W) order (a port that uses its
`nn.Module` as it is) or in the reference's (H, W, C) order (a port that permutes before flattening): the
order is read from the values (`flatten="auto"`) and the vectors are permuted like the images.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.methods.explain import METHODS
from fbi_ref.methods.fbi import STARTS, start_signal
from fbi_ref.reference.build import read_meta
from fbi_ref.reference.model import reference_model
from fbi_ref.reference.replay import replay

DEFAULT_TOLERANCE = 1e-4
# LRP-epsilon divides each relevance by its unit's pre-activation (plus epsilon = 1e-6): where that is near 0 a
# correct port's rounding is amplified (measured image by image: 1.0e-4 of the scale on the Shapes reference of
# the validation tests, against at most 4.6e-6 for every other method), so its keys get ten times the default.
DEFAULT_TOLERANCES = {"": DEFAULT_TOLERANCE, "lrp_epsilon/": 1e-3, "attr/lrp_epsilon": 1e-3}
# Keys another implementation may add that the reference does not store (too large): its max-pool winners on
# every input of the two methods that run many; compare replays them (replay.py).
DECISIONS = ("integrated_gradients/switch/", "smoothgrad/switch/")


@dataclass
class KeyComparison:
    """One array compared.

    measure: 'scaled' (max|other - ref| / max|ref|, `error`) or 'exact' (`error` = the share of elements that
    differ); tolerance: the bound `error` had to meet; worst: where the largest error is (image, position,
    channel or unit, as text); failing_per_image: {image: elements beyond the tolerance}; accepted: near-tie
    decisions taken from the other implementation; note: why it failed, and what the replay took.
    """
    key: str
    ref_shape: tuple
    other_shape: tuple
    measure: str = "scaled"
    error: float = 0.0
    tolerance: float = 0.0
    passed: bool = True
    worst: str = ""
    failing_per_image: dict = field(default_factory=dict)
    accepted: int = 0
    note: str = ""


@dataclass
class Comparison:
    """The comparison of two reference files: a row per compared key, in the reference's order."""
    rows: list
    only_in_ref: list
    only_in_other: list
    layout: str = "nhwc"
    layout_note: str = ""
    tolerances: dict = field(default_factory=dict)
    first_divergence: str | None = None
    failed: list = field(default_factory=list)
    near_ties: dict = field(default_factory=dict)
    replayed: dict = field(default_factory=dict)   # decision key -> near-tie decisions taken from other
    replay_note: str = ""
    methods: list = field(default_factory=list)     # the reference's methods that were checked
    missing_methods: list = field(default_factory=list)  # checked methods of which other has no key
    empty: dict = field(default_factory=dict)       # method -> {'images': [...], 'of': N, 'from': position}
    allow_empty: bool = False
    unchecked: list = field(default_factory=list)   # keys of methods left out of the check (both files)
    flatten_order: str = "hwc"                      # how other's flatten vectors were read: 'hwc' or 'chw'

    @property
    def passed(self):
        """True when at least one array was compared and none failed."""
        return bool(self.rows) and not self.failed

    def to_dict(self):
        """The comparison as strict JSON values."""
        out = asdict(self)
        out["passed"] = self.passed
        out["rows"] = [{**row, "ref_shape": list(row["ref_shape"]), "other_shape": list(row["other_shape"]),
                        "error": _json_float(row["error"]), "failing_per_image": {str(k): v for k, v in
                                                                                  row["failing_per_image"].items()}}
                       for row in out["rows"]]
        return out


def compare(ref, other, tolerances=None, layout="auto", require=(), ignore=(), model=None, replay=True,
            methods=None, allow_empty=False, flatten="auto"):
    """Compare another implementation's arrays with a reference ({key: array} each, as load_npz returns).

    tolerances: a float (every float array) or {key prefix: float} added to DEFAULT_TOLERANCES (the longest
    matching prefix wins; "" is the default). layout: 'nhwc', 'nchw' (other's 4-D and 5-D arrays
    are transposed to the reference's NHWC first) or 'auto' (decided from the shapes, else from the data).
    require / ignore: key prefixes that must be in other / that other may add. model: the reference's model,
    to replay near ties (None: built from the reference's weights if it holds them, else no replay).
    methods: the reference's methods to check (None: all of them; each must have a key in other); the keys
    of the others are left out of the comparison. allow_empty: pass a method whose reference attribution is
    all zero on every image (it checks nothing). flatten: the order of other's flatten vectors under the NCHW
    layout, 'auto' (from the values), 'hwc' or 'chw'.
    """
    tol = _tolerances(tolerances)
    _check_targets(ref)
    meta = read_meta(ref["meta"], getattr(ref, "name", "the reference")) if "meta" in ref else {}
    checked = _checked_methods(ref, meta, methods)
    unchecked = [k for k in [*ref, *other] if k != "meta" and _method_of(k) not in (None, *checked)]
    ref_keys = [k for k in ref if k != "meta" and k not in unchecked]
    other_keys = [k for k in other if k != "meta" and k not in unchecked]
    layout, layout_note = _layout(ref, other, layout)
    shared = [k for k in ref_keys if k in other]
    # Read no array of other whose header says it cannot match: its size is then bounded by the reference's.
    declared = {k: _aligned_shape(declared_shape(other, k), layout) for k in other_keys}
    misfits = {k for k in shared if declared[k] != tuple(declared_shape(ref, k))}
    flat = _flatten_shapes(ref, meta)
    order, order_note = _flatten_order(ref, other, [k for k in shared if k not in misfits], flat, layout, flatten)
    layout_note += order_note
    aligned = Aligned(other, layout, misfits, flat if order == "chw" else {})
    expected, note = {}, ""
    near = {}
    if replay and "meta" in ref and "x" in ref and "target" in ref:
        expected, near, note = _replayed(ref, aligned, model, tol)
    rows = []
    for key in shared:
        if key in misfits:
            ref_shape, shape = tuple(declared_shape(ref, key)), declared[key]
            hint = "; other looks NCHW: try --layout nchw" if len(shape) == 4 and _transposed_shape(shape) == \
                ref_shape and layout == "nhwc" else ""
            rows.append(KeyComparison(key, ref_shape, tuple(declared_shape(other, key)), "-", passed=False,
                                      tolerance=_tolerance(tol, key), note=f"shape {ref_shape} vs {shape}{hint}"))
            continue
        reference = expected["arrays"][key] if expected and key in expected["arrays"] else np.asarray(ref[key])
        row = compare_arrays(key, reference, aligned[key], _tolerance(tol, key), tuple(declared_shape(other, key)))
        if expected:
            _note_replay(row, key, expected)
        rows.append(row)
    decisions = _decision_keys(meta)
    unknown = [k for k in other_keys if k not in ref and k not in decisions and not any(map(k.startswith, ignore))]
    for key in unknown:
        rows.append(KeyComparison(key, (), tuple(declared_shape(other, key)), "-", passed=False,
                                  note=f"not a key of the reference{_suggestion(key, [*ref_keys, *decisions])}"))
    missing = [k for k in ref_keys if k not in other]
    for prefix in require:
        absent = [k for k in missing if k.startswith(prefix)]
        if absent or not any(k.startswith(prefix) for k in shared):
            rows.append(KeyComparison(f"{prefix}*", (), (), "-", passed=False,
                                      note=f"required, missing: {_summary(absent) or 'no key at all'}"))
    left_out = [m for m in checked if not any(_checks(k, m, meta) for k in shared if k not in misfits)]
    for method in left_out:
        rows.append(KeyComparison(f"{method}/*", (), (), "-", passed=False,
                                  note=f"a method of the reference, and the other file has no key of it that "
                                       f"checks it (its attr/{method}, or its walk below the start signal); leave it "
                                       f"out of the check with --methods"))
    empty = _empty_methods(ref, [m for m in checked if m not in left_out])
    for method, where in empty.items():
        if len(where["images"]) == where["of"] and not allow_empty:
            rows.append(KeyComparison(f"attr/{method}: empty", (), (), "-", passed=False,
                                      note=f"{_empty_text(method, where)}: it checks nothing; --allow-empty "
                                           f"accepts that"))
    try:  # what compare can tell about a difference: never a reason to fail differently, or to crash
        _note_options(rows, ref, other, meta, checked)
        _note_flatten(rows, meta, order)
    except (ValueError, TypeError, KeyError, InputError):
        pass
    failed = [row.key for row in rows if not row.passed]
    replayed = dict(expected.get("accepted", {})) if expected else {}
    return Comparison(rows, missing, [k for k in other_keys if k not in ref], layout, layout_note, tol,
                      failed[0] if failed else None, failed, near, replayed, note, checked, left_out, empty,
                      allow_empty, unchecked, order)


def _method_of(key):
    """The method a key belongs to ('attr/fbi', 'fbi/backward/fc1', 'gradcam/map': its name), or None (the
    forward pass: x, act/, switch/, w/, logits, probs, target)."""
    parts = key.split("/")
    name = parts[1] if parts[0] == "attr" and len(parts) > 1 else parts[0]
    return name if name in METHODS else None


def _checks(key, method, meta):
    """True when a key both files hold checks `method`: any of its keys but the start signal at the logits
    (<method>/backward/<last layer>, which the logits determine) and SmoothGrad's noise (a copy of the reference's)."""
    layers = meta.get("layers", [])
    start = f"{method}/backward/{layers[-1]['name']}" if layers else None
    return _method_of(key) == method and key not in (start, "smoothgrad/noise")


def add_note(row, text):
    """Append a clause to a row's note."""
    row.note = f"{row.note}; {text}" if row.note else text


def _checked_methods(ref, meta, methods):
    """The reference's methods to check: all of them (its meta's, else its attr/ keys), or the given ones."""
    held = list(meta.get("methods", {})) or [_method_of(k) for k in ref if k.startswith("attr/") and _method_of(k)]
    if methods is None:
        return held
    if isinstance(methods, str):
        raise InputError(f"methods must be a list of method names (or [] for none), not the string {methods!r}")
    methods = list(methods)
    stray = [m for m in methods if m not in held]
    if stray:
        raise InputError(f"the reference holds no method {stray[0]!r} (it holds: {', '.join(held) or 'none'})")
    return methods


def _empty_methods(ref, methods):
    """{method: {'images': the images whose reference attribution is all zero, 'of': N, 'from': the highest
    position of its walk where those images are all zero (None without a walk)}} for the methods with any."""
    out = {}
    for method in methods:
        if f"attr/{method}" not in ref:
            continue
        a = np.asarray(ref[f"attr/{method}"])
        if a.ndim == 0 or len(a) == 0:
            continue
        zero = ~np.any(a.reshape(len(a), -1), axis=1)  # (N,)
        if not zero.any():
            continue
        walk = [k for k in ref if k.startswith(f"{method}/backward/")]  # top-down
        start = next((k.split("/")[-1] for k in walk if not np.any(np.asarray(ref[k])[zero])), None)
        out[method] = {"images": [int(i) for i in np.flatnonzero(zero)], "of": int(len(a)), "from": start}
    return out


def _empty_text(method, where):
    """'attr/fbi is all zero on every image of the reference (its walk from fc1 down)'."""
    images = "every image" if len(where["images"]) == where["of"] else \
        f"image{'s' if len(where['images']) > 1 else ''} {', '.join(map(str, where['images'][:8]))}" + \
        (", ..." if len(where["images"]) > 8 else "") + f" (of {where['of']})"
    walk = f" (its walk from {where['from']} down)" if where["from"] else ""
    return f"attr/{method} is all zero on {images} of the reference{walk}"


def _note_options(rows, ref, other, meta, checked):
    """On the first failing row of a method: the options where the other file's meta (if it wrote one) differs
    from the reference's, and FBI's start signal that the other's values match when it is its start that differs."""
    theirs = {}
    if "meta" in other:
        try:
            theirs = read_meta(other["meta"], "the other file").get("methods", {})
        except InputError:
            theirs = {}
    ours = meta.get("methods", {})
    seen = set()
    for row in rows:
        method = _method_of(row.key)
        if row.passed or method not in checked or method in seen:
            continue
        seen.add(method)
        differ = [f"{name}={theirs[method][name]} vs {value}" for name, value in ours.get(method, {}).items()
                  if method in theirs and name in theirs[method] and theirs[method][name] != value]
        if differ:
            add_note(row, f"the other file's {method} options differ from the reference's: {', '.join(differ)}")
        elif method == "fbi" and row.key.startswith("fbi/backward/") and row.measure == "scaled":
            start = _matching_start(ref, other, row.key, ours.get("fbi", {}), row.tolerance)
            if start:
                add_note(row, start)


def _matching_start(ref, other, key, options, tolerance):
    """'its values are FBI's start='maxmin' (start_from='logits'), the reference's is start='contrast'' when the
    other file's start signal (key, (N, K)) is one of FBI's other start signals; '' otherwise."""
    if not all(k in ref for k in ("logits", "probs", "target")) or \
            tuple(declared_shape(other, key)) != tuple(declared_shape(ref, "logits")):
        return ""
    logits, probs, target = (np.asarray(ref[k]) for k in ("logits", "probs", "target"))
    theirs = np.asarray(other[key])
    if theirs.dtype.kind not in "biuf" or logits.dtype.kind != "f":
        return ""
    theirs = theirs.astype(np.float64)
    for start in STARTS:
        for source in (("logits", "probs") if start in ("maxmin", "logits") else ("logits",)):
            if start == options.get("start") and source == options.get("start_from", "logits"):
                continue
            signal = np.asarray(start_signal(start, source)(logits, probs, target), np.float64)
            scale = np.abs(signal).max(axis=1, keepdims=True)
            if np.all(np.abs(theirs - signal) <= tolerance * np.where(scale > 0, scale, 1)):
                which = f"start={start!r}" + (f" (start_from={source!r})" if start in ("maxmin", "logits") else "")
                mine = f"start={options.get('start')!r}" + (f" (start_from={options.get('start_from')!r})"
                                                           if options.get("start") in ("maxmin", "logits") else "")
                return f"the other file's start signal is FBI's {which}; the reference's is {mine}"
    return ""


def _flatten_shapes(ref, meta):
    """{flatten layer: the (H, W, C) of its input} from the reference's layers and activations."""
    out, previous = {}, None
    for layer in meta.get("layers", []):
        if layer["type"] == "Flatten" and previous is not None and f"act/{previous}" in ref:
            shape = declared_shape(ref, f"act/{previous}")
            if len(shape) == 4:
                out[layer["name"]] = tuple(shape[1:])
        previous = layer["name"]
    return out


def _at_flatten(key, flat):
    """The flatten layer whose output `key` holds (act/, a walk's backward/ or support/ vector), or None."""
    parts = key.split("/")
    at = parts[-1] in flat and (parts[0] == "act" and len(parts) == 2 or
                                len(parts) == 3 and parts[1] in ("backward", "support"))
    return parts[-1] if at else None


def _flatten_order(ref, other, shared, flat, layout, flatten):
    """('hwc' | 'chw', a note for the layout line): how other's flatten vectors are read."""
    if flatten not in ("auto", "hwc", "chw"):
        raise InputError(f"flatten must be 'auto', 'hwc' or 'chw', got {flatten!r}")
    if flatten != "auto":  # as given, in either layout
        return flatten, f"; flatten vectors in ({'C, H, W' if flatten == 'chw' else 'H, W, C'}) order (given)"
    if layout != "nchw" or not flat:
        return "hwc", ""
    for key in [k for k in shared if _at_flatten(k, flat)]:
        a, b = np.asarray(ref[key]), np.asarray(other[key])
        if a.shape != b.shape or a.ndim != 2 or a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf" or \
                not np.any(a):
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        close = 1e-4 * np.abs(a).max()  # the entries each reading matches; NaN matches nothing
        direct = int((np.abs(b - a) <= close).sum())
        permuted = int((np.abs(_chw_to_hwc(b, flat[_at_flatten(key, flat)]) - a) <= close).sum())
        if direct != permuted:
            order = "hwc" if direct > permuted else "chw"
            return order, f"; flatten vectors in ({'H, W, C' if order == 'hwc' else 'C, H, W'}) order (from the " \
                          f"values of {key})"
    return "hwc", ""


def _chw_to_hwc(v, hwc):
    """Vectors (N, C*H*W) in (C, H, W) order as (N, H*W*C) in (H, W, C) order."""
    h, w, c = hwc
    return v.reshape(len(v), c, h, w).transpose(0, 2, 3, 1).reshape(len(v), -1)


def _note_flatten(rows, meta, order):
    """When other's flatten vectors were read in (C, H, W) order and the dense layer after the flatten is the
    first to fail: the likely cause, its kernel's rows in the other order."""
    if order != "chw":
        return
    names = [layer["name"] for layer in meta.get("layers", [])]
    types = [layer["type"] for layer in meta.get("layers", [])]
    after = {names[i + 1] for i, t in enumerate(types[:-1]) if t == "Flatten"}
    first = next((row for row in rows if not row.passed), None)
    if first is not None and first.key.startswith("act/") and first.key[4:] in after:
        add_note(first, f"the other file's flatten is in (C, H, W) order: if its {first.key[4:]} kernel is the "
                        f"reference's w/{first.key[4:]}/kernel, permute that kernel's rows, which are in (H, W, C) order")


def _check_targets(ref):
    """A reference's targets are classes of its logits (InputError otherwise: it could not have been computed)."""
    if "target" not in ref or "logits" not in ref:
        return
    target, classes = np.asarray(ref["target"]), declared_shape(ref, "logits")[-1:]
    if target.dtype.kind not in "iu" or not classes or ((target < 0) | (target >= classes[0])).any():
        raise InputError(f"{getattr(ref, 'name', 'the reference')}: its target {target.ravel()[:4].tolist()} is not "
                         f"a class index of its logits (0..{classes[0] - 1 if classes else '?'})")


def _tolerances(tolerances):
    """{prefix: tolerance}: DEFAULT_TOLERANCES with the given ones, where a given prefix replaces every built-in
    tolerance under it (a bare number, or the prefix "", replaces them all)."""
    if tolerances is None:
        return dict(DEFAULT_TOLERANCES)
    given = {"": tolerances} if isinstance(tolerances, (int, float)) else dict(tolerances)
    given = {str(k): float(v) for k, v in given.items()}
    bad = [k for k, v in given.items() if not (v >= 0 and np.isfinite(v))]
    if bad:
        raise InputError(f"tolerance for {bad[0]!r} must be a finite number >= 0, got {given[bad[0]]}")
    kept = {p: v for p, v in DEFAULT_TOLERANCES.items() if not any(p.startswith(g) for g in given)}
    return {"": DEFAULT_TOLERANCE, **kept, **given}


def _tolerance(tol, key):
    """The tolerance of the longest prefix of `key` in tol."""
    return tol[max((p for p in tol if key.startswith(p)), key=len)]


def _decision_keys(meta):
    """The keys another file may add for the replay: <method>/switch/<pool> for the reference's many-input methods
    (meta: the reference's meta record, {} without one)."""
    pools = [layer["name"] for layer in meta.get("layers", []) if "Pool" in layer.get("type", "")]
    return [f"{prefix}{pool}" for prefix in DECISIONS if prefix.split("/")[0] in meta.get("methods", {})
            for pool in pools]


def _suggestion(key, keys):
    """'; did you mean K?' for the closest key (case ignored), or ''."""
    lowered = {k.lower(): k for k in keys}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.85)
    return f"; did you mean {lowered[close[0]]}?" if close else ""


def _layout(ref, other, layout):
    """('nhwc' | 'nchw', how it was decided)."""
    if layout in ("nhwc", "nchw"):
        return layout, "given"
    if layout != "auto":
        raise InputError(f"layout must be 'auto', 'nhwc' or 'nchw', got {layout!r}")
    shapes = {k: (tuple(declared_shape(ref, k)), tuple(declared_shape(other, k))) for k in ref
              if k in other and k != "meta"}
    candidates = [k for k, (r, o) in shapes.items() if len(r) == 4 == len(o)]
    for key in candidates:
        r, o = shapes[key]
        as_nhwc, as_nchw = o == r, _transposed_shape(o) == r
        if as_nhwc != as_nchw:
            return ("nhwc" if as_nhwc else "nchw"), f"from the shape of {key}"
    for key in [k for k in candidates if shapes[k][0] == shapes[k][1]]:  # every shape fits both ways (C = H = W)
        a, b = np.asarray(ref[key], np.float64), np.asarray(other[key], np.float64)  # decide by the values
        if a.shape == b.shape and np.any(a):
            direct, transposed = np.abs(b - a).max(), np.abs(_to_nhwc(b, "nchw") - a).max()
            if direct != transposed:
                return ("nhwc" if direct < transposed else "nchw"), f"from the values of {key} (its shape fits both)"
    return "nhwc", "no 4-D array to tell"


def declared_shape(arrays, key):
    """The shape of arrays[key], from its header where the mapping can tell it without reading the data."""
    if hasattr(arrays, "declared_shape"):
        return tuple(arrays.declared_shape(key))
    return tuple(np.shape(arrays[key]))


def _aligned_shape(shape, layout):
    """A shape of other as it will be in the reference's layout."""
    if layout == "nchw" and len(shape) == 4:
        return _transposed_shape(shape)
    if layout == "nchw" and len(shape) == 5:
        return (shape[0], shape[1], shape[3], shape[4], shape[2])
    return tuple(shape)


class Aligned(Mapping):
    """Another file's arrays read one at a time (when asked for) and put in the reference's layout; the keys in
    `misfits` (shapes that cannot match the reference's) are left out, never read; the vectors at the flatten
    layers of `chw_flatten` ({layer: (H, W, C)}) are permuted from (C, H, W) to (H, W, C) order."""

    def __init__(self, arrays, layout, misfits=(), chw_flatten=None):
        self.arrays, self.layout, self.misfits = arrays, layout, set(misfits)
        self.chw_flatten = dict(chw_flatten or {})

    def __contains__(self, key):
        return key in self.arrays and key not in self.misfits

    def __getitem__(self, key):
        if key in self.misfits:
            raise KeyError(key)
        a = np.asarray(self.arrays[key])
        if a.dtype.kind == "f" and a.dtype.itemsize < 4:  # float16: compared (and replayed) as float32
            a = a.astype(np.float32)
        at = _at_flatten(key, self.chw_flatten)
        if at and a.ndim == 2 and a.shape[1] == int(np.prod(self.chw_flatten[at])):
            return _chw_to_hwc(a, self.chw_flatten[at])
        return _to_nhwc(a, self.layout)

    def __iter__(self):
        return (key for key in self.arrays if key not in self.misfits)

    def __len__(self):
        return sum(1 for _ in self)


def _transposed_shape(shape):
    """The NHWC shape of an NCHW shape."""
    return (shape[0], shape[2], shape[3], shape[1])


def _to_nhwc(a, layout):
    """An array of other in the reference's layout: 4-D (N, C, H, W) and 5-D (N, S, C, H, W) transposed."""
    if layout == "nchw" and a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    if layout == "nchw" and a.ndim == 5:
        return a.transpose(0, 1, 3, 4, 2)
    return a


def _replayed(ref, aligned, model, tol):
    """The arrays to compare against after replaying the near-tie decisions of other: ({'arrays', 'accepted',
    'refused', 'exempt'}, near ties in the reference, a note)."""
    meta = read_meta(ref["meta"], getattr(ref, "name", "the reference"))
    near = meta.get("near_ties", {})
    if model is None:
        model, why = reference_model(ref)
        if model is None:
            return {}, near, f"near ties not replayed: {why}"
    result = replay(model, ref, aligned, DEFAULT_TOLERANCE if tol.get("") is None else tol[""])
    return ({"arrays": result.expected, "accepted": result.accepted, "refused": result.refused,
             "hints": result.hints}, near, "")


def _note_replay(row, key, expected):
    """Mark a row with what the replay accepted, refused or exempted for it."""
    if key in expected["accepted"]:
        row.accepted = expected["accepted"][key]
        add_note(row, f"{row.accepted} near-tie decisions taken from the other")
    if key in expected["refused"]:
        row.passed = False
        add_note(row, expected["refused"][key])
    refused = [why for decision, why in expected["refused"].items() if decision.startswith(f"{key[5:]}/switch/")]
    if refused:  # winners of its inputs that no near tie explains
        row.passed = False
        add_note(row, f"{key[5:]}/switch: {refused[0]}")
    for hint, text in expected["hints"].items() if not row.passed else ():
        if hint == key or (hint == "*" and not key.startswith(("x", "w/", "act/"))) or \
                (hint.endswith("*") and len(hint) > 1 and key.startswith(hint[:-1])):
            add_note(row, text)
    for kind, words in (("switch", "near-tie max-pool winners"), ("gate", "ReLU gates near 0")):
        count = expected["accepted"].get(f"{key[5:]}/{kind}")
        if count:
            row.accepted += count
            add_note(row, f"{count} {words} of its inputs taken from the other")


def compare_arrays(key, ref, other, tolerance, other_shape=None):
    """Compare one array pair: 'scaled' for floats, 'exact' for integers, booleans and text."""
    row = KeyComparison(key, tuple(ref.shape), tuple(other_shape if other_shape is not None else other.shape),
                        tolerance=tolerance)
    if ref.shape != other.shape:
        hint = "; other looks NCHW: try --layout nchw" if _looks_nchw(ref, other) else ""
        row.passed, row.measure, row.note = False, "-", f"shape {ref.shape} vs {other.shape}{hint}"
        return row
    if not (_numeric(ref) and _numeric(other)):
        try:
            row.measure, row.passed = "exact", bool(np.array_equal(ref, other))
        except (TypeError, ValueError):  # structured against plain, ...: not the same thing
            row.measure, row.passed = "exact", False
        row.note = "" if row.passed else f"differs ({ref.dtype} vs {other.dtype})"
        return row
    if ref.dtype.kind in "biu" and other.dtype.kind in "biu":
        return _exact(row, ref, other)
    a, b = ref.astype(np.float64), other.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, which fails below
        diff = np.abs(b - a)
    finite = np.isfinite(diff)
    scale = _scale(key, a)  # () or (N, 1, ..., 1)
    with np.errstate(invalid="ignore", over="ignore"):  # inf / inf: NaN, which fails below
        relative = diff / scale
    row.error = float(relative.max()) if a.size and finite.all() else (float("inf") if a.size else 0.0)
    row.passed = row.error <= tolerance
    if not row.passed:
        bad = ~(relative <= tolerance)  # NaN counts as bad
        row.failing_per_image = _per_image(bad)
        worst = np.unravel_index(int(np.argmax(np.where(finite, relative, np.inf))), diff.shape)
        row.worst = locate(worst, ref.shape)
        row.note = f"{int(bad.sum())} of {bad.size} elements beyond {tolerance:g} x max|ref|"
    return row


def _scale(key, a):
    """The magnitude each element's error is measured against: max|ref| per image for the arrays of a batch
    (their first axis), so that an image whose values are all small (FBI's contrast start on a confident
    prediction: 1e-5 of another image's) is held to its own scale; the whole array's for weights (`w/`).
    An image that is all zero is measured against the whole array's scale (1 if that is zero too)."""
    whole = float(np.abs(a).max()) if a.size else 0.0
    whole = whole if whole > 0 else 1.0
    if key.startswith("w/") or a.ndim < 2 or a.size == 0:
        return whole
    per_image = np.abs(a).reshape(len(a), -1).max(axis=1)  # (N,)
    per_image = np.where(per_image > 0, per_image, whole)
    return per_image.reshape((len(a),) + (1,) * (a.ndim - 1))


def _exact(row, ref, other):
    """Integer and boolean arrays: every element equal."""
    row.measure = "exact"
    bad = ref != other
    row.error = float(bad.mean()) if bad.size else 0.0
    row.passed = not bad.any()
    if not row.passed:
        row.failing_per_image = _per_image(bad)
        row.worst = locate(np.unravel_index(int(np.argmax(bad)), bad.shape), ref.shape)
        row.note = f"{int(bad.sum())} of {bad.size} elements differ"
    return row


def _per_image(bad):
    """{image: how many elements are bad} for the images with any (the first axis is the image)."""
    if bad.ndim == 0:
        return {0: int(bad)}
    counts = bad.reshape(len(bad), -1).sum(axis=1)
    return {int(i): int(c) for i, c in enumerate(counts) if c}


def locate(index, shape):
    """An element's place in words: 'image 2, (13, 40), channel 5' (NHWC), 'image 2, unit 17' (N, F)."""
    index = tuple(int(i) for i in index)
    if len(shape) == 4:
        return f"image {index[0]}, (row {index[1]}, col {index[2]}), channel {index[3]}"
    if len(shape) == 5:
        return f"image {index[0]}, sample {index[1]}, (row {index[2]}, col {index[3]}), channel {index[4]}"
    if len(shape) == 3:
        return f"image {index[0]}, (row {index[1]}, col {index[2]})"
    if len(shape) == 2:
        return f"image {index[0]}, unit {index[1]}"
    if len(shape) == 1:
        return f"image {index[0]}"
    return f"index {index}"


def _numeric(a):
    """Booleans, integers and floats compare as numbers; anything else as text."""
    return a.dtype.kind in "biuf"


def _looks_nchw(ref, other):
    """True when other is a 4-D array whose NCHW -> NHWC transpose has ref's shape."""
    return other.ndim == 4 and ref.ndim == 4 and _transposed_shape(other.shape) == ref.shape


def _json_float(value):
    """A float as JSON allows it (nan and inf as text)."""
    return value if np.isfinite(value) else str(value)


def _summary(keys, most=3):
    """Keys for a summary line, a group with more than `most` keys under one prefix as 'w/... (18)'."""
    groups = {}
    for key in keys:
        groups.setdefault(key.split("/")[0] + "/..." if "/" in key else key, []).append(key)
    return ", ".join(", ".join(group) if len(group) <= most else f"{prefix} ({len(group)})"
                     for prefix, group in groups.items())



def format_comparison(result, ref_name="REF", other_name="OTHER"):
    """A comparison as a table, then the keys in one file only, then a one-line verdict."""
    width = max([len(row.key) for row in result.rows] + [3])
    lines = [f"layout: {result.layout} ({result.layout_note}); measure: max|{other_name} - {ref_name}| / "
             f"max|{ref_name}| per image for floats, equality for integers and booleans",
             f"{'key':<{width}}  {'shape':<18} {'measure':<7} {'error':>9} {'tol':>7}  status"]
    for row in result.rows:
        shape = str(row.ref_shape) if row.ref_shape else str(row.other_shape)
        error = f"{row.error:>9.2g}" if row.measure in ("scaled", "exact") else f"{'-':>9}"
        tol = f"{row.tolerance:>7.0e}" if row.measure == "scaled" else f"{'-':>7}"
        status = "ok" if row.passed else "FAIL"
        where = "first" if row.measure == "exact" else "worst"
        detail = "; ".join(filter(None, [row.note, f"{where} at {row.worst}" if row.worst else "",
                                         _images(row.failing_per_image)]))
        lines.append(f"{row.key:<{width}}  {shape:<18} {row.measure:<7} {error} {tol}  {status}"
                     + (f"  {detail}" if detail else ""))
    for name, keys in ((ref_name, result.only_in_ref), (other_name, result.only_in_other)):
        if keys:
            lines.append(f"only in {name} ({len(keys)}): {_summary(keys)}")
    if result.replayed:
        lines.append("near ties replayed with the other file's decisions: "
                     + ", ".join(f"{key} {count}" for key, count in result.replayed.items()))
    if result.replay_note:
        lines.append(result.replay_note)
    if result.unchecked:
        lines.append(f"not checked (--methods {','.join(result.methods) or 'none'}): {_summary(result.unchecked)}")
    for method, where in result.empty.items():
        whole = len(where["images"]) == where["of"]
        lines.append(f"{_empty_text(method, where)}: " + ("it checks nothing (accepted: --allow-empty)" if whole and
                     result.allow_empty else "it checks nothing" if whole else
                     "there it checks only that the other file is zero too"))
    lines.append(verdict(result))
    return "\n".join(lines)


def _images(counts, most=4):
    """'failing per image: 0: 12, 3: 400' (the first few)."""
    if not counts:
        return ""
    items = list(counts.items())
    text = ", ".join(f"{i}: {c}" for i, c in items[:most]) + (", ..." if len(items) > most else "")
    return f"failing per image {{{text}}}"


def verdict(result):
    """The one-line summary of a comparison: what passed, or every kind of failure with the first divergence."""
    accepted = sum(result.replayed.values())
    ties = f"; {accepted} near-tie decisions taken from the other file" if accepted else ""
    tol = ", ".join(f"{p or 'default'} {v:g}" for p, v in result.tolerances.items()) if result.tolerances \
        else "default"
    methods = f"methods {', '.join(result.methods)}" if result.methods else "no method"
    if not result.rows:
        return f"FAILED: the two files share no arrays (tolerance {tol})"
    if result.passed:
        allowed = [m for m, where in result.empty.items() if len(where["images"]) == where["of"]]
        empty = f"; all zero in the reference, so unchecked: {', '.join(allowed)}" if allowed else ""
        return f"PASSED: all {len(result.rows)} shared arrays agree; {methods} (tolerance {tol}{ties}){empty}"
    first = next(row for row in result.rows if row.key == result.first_divergence)
    where = f" at {first.worst}" if first.worst else ""
    compared = [row for row in result.rows if row.measure in ("scaled", "exact") or row.ref_shape]
    differ = sum(not row.passed for row in compared)
    empty = [m for m in result.empty if f"attr/{m}: empty" in result.failed]
    others = len(result.rows) - len(compared) - len(result.missing_methods) - len(empty)
    parts = [f"{differ} of {len(compared)} shared arrays differ" if differ else
             ("the shared array agrees" if len(compared) == 1 else f"all {len(compared)} shared arrays agree")]
    if result.missing_methods:
        parts.append(f"no key in the other file for {', '.join(result.missing_methods)}")
    if empty:
        parts.append(f"all zero in the reference, so unchecked: {', '.join(empty)}")
    if others:
        parts.append(f"{others} key{'s' if others > 1 else ''} unknown to REF or required and missing")
    return f"FAILED: {'; '.join(parts)} (tolerance {tol}{ties}); first divergence: {result.first_divergence}{where}"
