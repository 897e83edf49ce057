"""The numba kernels equal their plain-Python versions (the same function, run by the interpreter)."""
import numpy as np
from hypothesis import given, settings

from fbi_ref.nn import kernels
from fbi_ref.nn.geometry import geometry

from .strategies import conv_case, pool_case, randn, seeds


def run_both(name, *args, out_index=-1):
    """Run the plain and the jitted kernel on copies of the same arguments; return both outputs."""
    results = []
    for table in (kernels.PLAIN, kernels.JITTED):
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        table[name](*copies)
        results.append(copies)
    return results


@given(conv_case(), seeds)
@settings(deadline=None, max_examples=15)
def test_im2col_and_col2im_plain_equals_jitted(case, seed):
    n, hw, c, _, k, strides, padding = case
    ho, wo, pt, pl = geometry(hw, k, strides, padding)
    x = randn(seed, n, *hw, c)
    plain, jit = run_both("im2col", x, *k, *strides, pt, pl, np.full((n, ho, wo, *k, c), np.nan))
    np.testing.assert_array_equal(plain[-1], jit[-1])
    cols = randn(seed + 1, n, ho, wo, *k, c)
    plain, jit = run_both("col2im", cols, *strides, pt, pl, np.full((n, *hw, c), np.nan))
    np.testing.assert_allclose(plain[-1], jit[-1], rtol=1e-13, atol=1e-13)


@given(pool_case(), seeds)
@settings(deadline=None, max_examples=15)
def test_pool_kernels_plain_equal_jitted(case, seed):
    n, hw, c, pool, strides, padding = case
    ho, wo, pt, pl = geometry(hw, pool, strides, padding)
    x = np.round(randn(seed, n, *hw, c))
    plain, jit = run_both("maxpool", x, *pool, *strides, pt, pl,
                          np.empty((n, ho, wo, c)), np.empty((n, ho, wo, c), np.int64))
    np.testing.assert_array_equal(plain[-2], jit[-2])
    np.testing.assert_array_equal(plain[-1], jit[-1])
    g, sw = randn(seed + 1, n, ho, wo, c), jit[-1]
    plain, jit = run_both("unpool_switch", g, sw, *pool, *strides, pt, pl, np.empty((n, *hw, c)))
    np.testing.assert_allclose(plain[-1], jit[-1], atol=1e-13)
    for average in (False, True):
        plain, jit = run_both("unpool_replicate", g, *pool, *strides, pt, pl, average, np.empty((n, *hw, c)))
        np.testing.assert_allclose(plain[-1], jit[-1], atol=1e-13)
