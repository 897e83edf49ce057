"""The numba inner loops: patch gathering for convolution, and max-pooling with its three backward maps.

Every kernel is a plain Python function `_name`, jitted once by `name = jit(_name)`, so the plain version
stays callable (and testable) on small inputs. All of them are written as *gathers*: each parallel
iteration computes and writes only its own outputs, so `prange` needs no atomics and has no races.

Geometry used throughout (one spatial axis; the other is the same): a window/patch `o` of size `k` and
stride `s` starts at input row `o * s - pad` and covers `k` rows. Input row `i` is covered by window `o`
at offset `d = i + pad - o * s` when `0 <= d < k`; so, looping over the offset `d`, the covering window is
`o = (i + pad - d) / s` whenever that division is exact and `0 <= o < out`.
"""
import os

import numba
import numpy as np


def use_workqueue_threads():
    """Run numba's parallel kernels on its 'workqueue' threading layer, unless NUMBA_THREADING_LAYER says
    otherwise; returns the layer asked for.

    numba's default 'omp' threads keep spinning after a kernel and fight OpenBLAS for the cores (1.7x slower
    end to end on 2 cores, docs/performance.md); 'workqueue' does not. It is a setting of the whole process,
    and numba reads it when its first parallel kernel runs: the command line calls this at start; a program
    that embeds fbi_ref calls it (`fbi_ref.use_workqueue_threads()`) before its first explanation, or not.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    return numba.config.THREADING_LAYER


def jit(fn):
    """Compile a plain kernel with numba: parallel loops, cached on disk."""
    return numba.njit(parallel=True, cache=True)(fn)


def _covering(i, pad, d, stride, out):
    """The window that covers input row i at offset d, or -1 if there is none."""
    t = i + pad - d
    if t < 0 or t % stride != 0:
        return -1
    o = t // stride
    return o if o < out else -1


covering = numba.njit(cache=True)(_covering)


def _im2col(x, kh, kw, sh, sw, pt, pl, cols):
    """Copy every (kh, kw, C) patch of x (N, H, W, C) into cols (N, Ho, Wo, kh, kw, C); zeros outside."""
    n_img, h, w, c = x.shape
    ho, wo = cols.shape[1], cols.shape[2]
    for row in numba.prange(n_img * ho):
        n, oh = row // ho, row % ho
        for ow in range(wo):
            for ki in range(kh):
                ih = oh * sh - pt + ki
                for kj in range(kw):
                    iw = ow * sw - pl + kj
                    if 0 <= ih < h and 0 <= iw < w:
                        for ch in range(c):
                            cols[n, oh, ow, ki, kj, ch] = x[n, ih, iw, ch]
                    else:
                        for ch in range(c):
                            cols[n, oh, ow, ki, kj, ch] = 0.0


def _col2im(cols, sh, sw, pt, pl, out):
    """Adjoint of im2col: out (N, H, W, C) gets, at each pixel, the sum of the patch entries that copied it."""
    n_img, h, w, c = out.shape
    ho, wo, kh, kw = cols.shape[1], cols.shape[2], cols.shape[3], cols.shape[4]
    for row in numba.prange(n_img * h):
        n, ih = row // h, row % h
        for iw in range(w):
            for ch in range(c):
                out[n, ih, iw, ch] = 0.0
            for ki in range(kh):
                oh = covering(ih, pt, ki, sh, ho)
                if oh < 0:
                    continue
                for kj in range(kw):
                    ow = covering(iw, pl, kj, sw, wo)
                    if ow < 0:
                        continue
                    for ch in range(c):
                        out[n, ih, iw, ch] += cols[n, oh, ow, ki, kj, ch]


def _maxpool(x, ph, pw, sh, sw, pt, pl, out, switches):
    """Max over each window of x (N, H, W, C) into out (N, Ho, Wo, C); switches hold the argmax as ih * W + iw.

    Padding cells never win (they are -inf). Ties go to the first maximum in row-major order of the window.
    """
    n_img, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for row in numba.prange(n_img * ho):
        n, oh = row // ho, row % ho
        for ow in range(wo):
            for ch in range(c):
                best = -np.inf
                arg = -1
                for ki in range(ph):
                    ih = oh * sh - pt + ki
                    if ih < 0 or ih >= h:
                        continue
                    for kj in range(pw):
                        iw = ow * sw - pl + kj
                        if iw < 0 or iw >= w:
                            continue
                        v = x[n, ih, iw, ch]
                        if v > best or arg < 0:  # strict '>': the first maximum keeps the switch
                            best = v
                            arg = ih * w + iw
                out[n, oh, ow, ch] = best
                switches[n, oh, ow, ch] = arg


def _unpool_switch(g, switches, ph, pw, sh, sw, pt, pl, out):
    """Adjoint of 'pick the switch entry': out (N, H, W, C) sums g (N, Ho, Wo, C) over windows whose switch is here."""
    n_img, h, w, c = out.shape
    ho, wo = g.shape[1], g.shape[2]
    for row in numba.prange(n_img * h):
        n, ih = row // h, row % h
        for iw in range(w):
            here = ih * w + iw
            for ch in range(c):
                out[n, ih, iw, ch] = 0.0
            for ki in range(ph):
                oh = covering(ih, pt, ki, sh, ho)
                if oh < 0:
                    continue
                for kj in range(pw):
                    ow = covering(iw, pl, kj, sw, wo)
                    if ow < 0:
                        continue
                    for ch in range(c):  # branch-free, so that numba vectorises the channel loop
                        out[n, ih, iw, ch] += g[n, oh, ow, ch] * (switches[n, oh, ow, ch] == here)


def _unpool_replicate(g, ph, pw, sh, sw, pt, pl, average, out):
    """Adjoint of window summation: out (N, H, W, C) sums g (N, Ho, Wo, C) over the windows covering each cell.

    With average=True each cell gets the mean over its covering windows instead (0 where none covers it).
    """
    n_img, h, w, c = out.shape
    ho, wo = g.shape[1], g.shape[2]
    for row in numba.prange(n_img * h):
        n, ih = row // h, row % h
        for iw in range(w):
            for ch in range(c):
                out[n, ih, iw, ch] = 0.0
            count = 0
            for ki in range(ph):
                oh = covering(ih, pt, ki, sh, ho)
                if oh < 0:
                    continue
                for kj in range(pw):
                    ow = covering(iw, pl, kj, sw, wo)
                    if ow < 0:
                        continue
                    count += 1
                    for ch in range(c):
                        out[n, ih, iw, ch] += g[n, oh, ow, ch]
            if average and count > 1:
                for ch in range(c):
                    out[n, ih, iw, ch] /= count


im2col = jit(_im2col)
col2im = jit(_col2im)
maxpool = jit(_maxpool)
unpool_switch = jit(_unpool_switch)
unpool_replicate = jit(_unpool_replicate)

PLAIN = {"im2col": _im2col, "col2im": _col2im, "maxpool": _maxpool,
         "unpool_switch": _unpool_switch, "unpool_replicate": _unpool_replicate}
JITTED = {"im2col": im2col, "col2im": col2im, "maxpool": maxpool,
          "unpool_switch": unpool_switch, "unpool_replicate": unpool_replicate}
