"""Reference files for checking another implementation, and their comparison.

May import methods, io and nn; only the command line imports it.

    build.py     build_reference: every intermediate of the forward pass and of each method, in order
    compare.py   compare: array by array, and the first key where two files diverge
    replay.py    near ties: the decisions another implementation may take otherwise, replayed, not failed
    model.py     the reference's model rebuilt from the file (for the replay)
    shards.py    a reference as a folder of shards and an index, read as one (open_reference)

    from fbi_ref import reference
    reference.write_npz("ref.npz", reference.build_reference(model, x, methods=("fbi",)))
    result = reference.compare(reference.load_npz("ref.npz"), reference.load_npz("mine.npz"))
"""
from fbi_ref.io.arrays import load_npz, write_npz
from fbi_ref.reference.build import build_reference
from fbi_ref.reference.compare import Comparison, KeyComparison, compare, format_comparison

__all__ = ["build_reference", "compare", "format_comparison", "Comparison", "KeyComparison", "load_npz", "write_npz"]
