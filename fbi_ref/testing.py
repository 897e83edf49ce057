"""Checking a re-implementation from its own test suite (pytest, unittest): compare's verdict as an assertion.

    import fbi_ref.testing

    def test_my_port_against_a_stored_reference():
        fbi_ref.testing.assert_matches_reference("ref.npz", "mine.npz", methods=["gradient"])

    def test_my_port_on_the_shapes_model():          # my_gradient(x, weights) -> {key: array}
        fbi_ref.testing.check_port(my_gradient, model="shapes", methods=["gradient"], layout="nchw")

Both raise AssertionError with compare's whole report (the table, the first divergence, the verdict) when the
port differs; docs/reference-format.md ("In your own test suite") has a complete example.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.io.images import preprocess_caffe
from fbi_ref.io.zoo import load_model
from fbi_ref.nn.model import Model
from fbi_ref.reference.build import build_reference, read_meta
from fbi_ref.reference.compare import compare, format_comparison
from fbi_ref.reference.shards import open_reference
from fbi_ref.shapes import generate

__all__ = ["assert_matches_reference", "check_port", "make_reference"]


def assert_matches_reference(reference, other, **compare_options):
    """Assert that another implementation's arrays match a reference, as `fbi-ref compare` judges them.

    Parameters
    ----------
    reference, other : a path (an .npz file, or a folder of reference shards) or a {key: array} mapping.
    **compare_options : as `fbi_ref.reference.compare`: tolerances, layout ('auto', 'nhwc', 'nchw'), methods
        (the reference's methods to check; default all, each must have a key in other), allow_empty, require,
        ignore, model, replay, flatten.

    Returns
    -------
    The Comparison, when it passed. Raises AssertionError with compare's report otherwise.
    """
    with ExitStack() as stack:
        ref = _opened(stack, reference)
        theirs = _opened(stack, other)
        result = compare(ref, theirs, **compare_options)
        if not result.passed:
            names = [_name(reference, "REF"), _name(other, "OTHER")]
            raise AssertionError("\n" + format_comparison(result, *names))
        return result


def make_reference(model="shapes", methods=("gradient",), x=None, options=None, target=None, n=4, seed=0):
    """A reference ({key: array}, the weights included) of a model on a batch, as `fbi-ref reference` writes it.

    model: a name, a path or a Model; x: (N, H, W, C) preprocessed inputs, or None for n generated Shapes
    images (seed) when the model takes 64 x 64 caffe input; options: {method: {option: value}}; target: as
    for explain (None: each image's prediction).
    """
    model = model if isinstance(model, Model) else load_model(str(model))
    if x is None:
        if tuple(model.input_shape) != (64, 64, 3) or str(model.preprocessing) != "caffe":
            raise InputError(f"give x: generated Shapes images fit 64 x 64 caffe input, not {model.name}'s "
                             f"{tuple(model.input_shape)} {model.preprocessing}")
        x = preprocess_caffe(generate(n, seed=seed, kind="distractor").images)
    return build_reference(model, np.asarray(x), tuple(methods), target, options, with_weights=True)


def check_port(fn, model="shapes", methods=("gradient",), layout="nchw", x=None, options=None, target=None,
               **compare_options):
    """Run a port on a reference's inputs and assert that its arrays match the reference's.

    Parameters
    ----------
    fn : the port, called as fn(x, weights) (or fn(x, weights, meta) if it takes a `meta` parameter):
        x the reference's preprocessed inputs, float32, (N, C, H, W) for layout='nchw' or (N, H, W, C);
        weights {layer name: {"kernel": ..., "bias": ...}} in the reference's layouts (conv kernels HWIO, dense
        kernels (in, out) with rows in (H, W, C) flatten order; docs/reference-format.md); meta the reference's
        meta record as a dict (its layers, and per method every option used). It returns {key: array} under
        the reference's keys (4-D arrays in its layout), e.g. logits, act/<layer>, attr/<method>.
    model, methods, x, options, target : the reference, as for `make_reference`.
    layout : 'nchw' or 'nhwc', the layout fn takes and returns.
    **compare_options : as for `assert_matches_reference` (tolerances, allow_empty, flatten, ...).

    Returns
    -------
    The Comparison, when it passed. Raises AssertionError with compare's report otherwise.
    """
    if layout not in ("nchw", "nhwc"):
        raise InputError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    ref = make_reference(model, methods, x, options, target)
    meta = read_meta(ref["meta"])
    weights = {}
    for key, value in ref.items():
        if key.startswith("w/"):
            _, layer, name = key.split("/")
            weights.setdefault(layer, {})[name] = np.array(value)  # a writable copy (torch.from_numpy warns on
            # a read-only array)
    inputs = ref["x"].transpose(0, 3, 1, 2).copy() if layout == "nchw" else ref["x"].copy()
    takes_meta = "meta" in inspect.signature(fn).parameters
    arrays = fn(inputs, weights, meta=meta) if takes_meta else fn(inputs, weights)
    if not isinstance(arrays, dict):
        raise InputError(f"the port must return a dict of arrays, not {type(arrays).__name__}")
    theirs = {key: np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
              for key, value in arrays.items()}
    return assert_matches_reference(ref, theirs, layout=layout, methods=list(methods), **compare_options)


def _opened(stack, arrays):
    """A {key: array} mapping from a mapping, or from a path opened for the comparison."""
    if isinstance(arrays, (str, Path)):
        return stack.enter_context(open_reference(arrays))
    return arrays


def _name(arrays, default):
    """A file's name for the report, or a default for a mapping."""
    return Path(arrays).name if isinstance(arrays, (str, Path)) else default
