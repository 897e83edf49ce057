"""Comparing two reference files key by key, and naming the first key where they diverge.

    result = compare(load_npz("ref.npz"), load_npz("mine.npz"), rtol=1e-5, atol=1e-6, layout="nhwc")
    print(format_comparison(result))                   # a table and a one-line verdict
    result.passed, result.first_divergence             # e.g. False, 'act/fc1'
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from fbi_ref.errors import InputError


@dataclass
class KeyComparison:
    """One array compared: passed when every element has |other - ref| <= atol + rtol * |ref|.

    max_rel is the largest |other - ref| / |ref| over the elements where ref is not zero.
    """
    key: str
    ref_shape: tuple
    other_shape: tuple
    max_abs: float = 0.0
    max_rel: float = 0.0
    n_bad: int = 0
    passed: bool = True
    note: str = ""


@dataclass
class Comparison:
    """The comparison of two reference files: one row per shared key, in the reference's order."""
    rows: list
    only_in_ref: list
    only_in_other: list
    rtol: float
    atol: float
    layout: str = "nhwc"
    first_divergence: str | None = None
    failed: list = field(default_factory=list)

    @property
    def passed(self):
        """True when at least one array was compared and all of them agree."""
        return bool(self.rows) and not self.failed

    def to_dict(self):
        """The comparison as strict JSON values."""
        out = asdict(self)
        out["passed"] = self.passed
        out["rows"] = [{**row, "ref_shape": list(row["ref_shape"]), "other_shape": list(row["other_shape"]),
                        "max_abs": _json_float(row["max_abs"]), "max_rel": _json_float(row["max_rel"])}
                       for row in out["rows"]]
        return out


def compare(ref, other, rtol=1e-5, atol=1e-6, layout="nhwc"):
    """Compare every array two reference files share ({key: array} each, as load_npz returns).

    layout='nchw' transposes other's 4-D arrays from (N, C, H, W) to (N, H, W, C) first. The 'meta'
    record is not compared. first_divergence is the first failing key in ref's order, which is the order
    of the computation: the forward pass layer by layer, then FBI's walk from the top down.
    """
    if layout not in ("nhwc", "nchw"):
        raise InputError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
    if layout == "nchw":
        other = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in other.items()}
    shared = [k for k in ref if k in other and k != "meta"]
    rows = [compare_arrays(k, ref[k], other[k], rtol, atol) for k in shared]
    failed = [row.key for row in rows if not row.passed]
    return Comparison(rows, [k for k in ref if k not in other], [k for k in other if k not in ref],
                      rtol, atol, layout, failed[0] if failed else None, failed)


def compare_arrays(key, ref, other, rtol, atol):
    """Compare one array pair elementwise (as float64); shapes must match exactly."""
    row = KeyComparison(key, tuple(ref.shape), tuple(other.shape))
    if ref.shape != other.shape:
        hint = "; other looks NCHW: try --layout nchw" if _looks_nchw(ref, other) else ""
        row.passed, row.note = False, f"shape {ref.shape} vs {other.shape}{hint}"
        return row
    if not (_numeric(ref) and _numeric(other)):
        row.passed = bool(np.array_equal(ref, other))
        row.note = "compared as text" + ("" if row.passed else ": differs")
        return row
    a, b = ref.astype(np.float64), other.astype(np.float64)
    diff = np.abs(b - a)
    bad = ~(diff <= atol + rtol * np.abs(a))  # written this way so that NaN counts as bad
    nonzero = a != 0
    row.max_abs = float(diff.max()) if diff.size else 0.0
    row.max_rel = float((diff[nonzero] / np.abs(a[nonzero])).max()) if nonzero.any() else 0.0
    row.n_bad = int(bad.sum())
    row.passed = row.n_bad == 0
    if not row.passed:
        row.note = f"{row.n_bad} of {diff.size} elements out of tolerance"
    return row


def _numeric(a):
    """Booleans, integers and floats compare as numbers; anything else as text."""
    return a.dtype.kind in "biuf"


def _looks_nchw(ref, other):
    """True when other is a 4-D array whose NCHW -> NHWC transpose has ref's shape."""
    return other.ndim == 4 and ref.ndim == 4 and other.transpose(0, 2, 3, 1).shape == ref.shape


def _json_float(value):
    """A float as JSON allows it (nan and inf as text)."""
    return value if np.isfinite(value) else str(value)


def format_comparison(result, ref_name="REF", other_name="OTHER"):
    """A comparison as a human-readable table with a one-line verdict at the end."""
    width = max([len(row.key) for row in result.rows] + [3])
    lines = [f"{'key':<{width}}  {'shape':<18} {'max abs':>10} {'max rel':>10}  status"]
    for row in result.rows:
        status = "ok" if row.passed else f"FAIL  {row.note}"
        same = row.ref_shape == row.other_shape
        errors = f"{row.max_abs:>10.3g} {row.max_rel:>10.3g}" if same else f"{'-':>10} {'-':>10}"
        lines.append(f"{row.key:<{width}}  {str(row.ref_shape):<18} {errors}  {status}")
    for name, keys in ((ref_name, result.only_in_ref), (other_name, result.only_in_other)):
        if keys:
            lines.append(f"only in {name} ({len(keys)}): {summarise_keys(keys)}")
    lines.append(verdict(result))
    return "\n".join(lines)


def summarise_keys(keys, most=3):
    """Keys for a summary line, a group with more than `most` keys under one prefix as 'w/... (18)'."""
    groups = {}
    for key in keys:
        groups.setdefault(key.split("/")[0] + "/..." if "/" in key else key, []).append(key)
    parts = [(", ".join(group) if len(group) <= most else f"{prefix} ({len(group)})") for prefix, group in groups.items()]
    return ", ".join(parts)


def verdict(result):
    """The one-line summary of a comparison."""
    tol = f"rtol {result.rtol:g}, atol {result.atol:g}"
    if not result.rows:
        return f"FAILED: the two files share no arrays ({tol})"
    if result.passed:
        return f"PASSED: all {len(result.rows)} shared arrays agree ({tol})"
    return (f"FAILED: {len(result.failed)} of {len(result.rows)} shared arrays differ ({tol}); "
            f"first divergence: {result.first_divergence}")
