"""Winograd F(2x2, 3x3): the fast path for 3x3 stride-1 'same' convolutions and their adjoints.

The plain path (im2col + matmul, `layers.conv2d_forward`) multiplies every 3x3 patch by the kernel: 9
multiply-adds per output per input channel. Winograd's minimal filtering (Lavin & Gray 2016) computes a
2x2 output tile from a 4x4 input tile with 16 multiplications instead of 36, in three steps:

    V = B^T d B      each 4x4 input tile d, per channel           (input transform, numba)
    U = G g G^T      each 3x3 kernel g, per (in, out) channel     (kernel transform, once per kernel)
    M = V . U        16 independent matmuls (tiles x C) @ (C x O) (BLAS: where the time goes)
    Y = A^T M A      each tile's 2x2 output                        (output transform, numba)

so the matmuls do 16/36 = 1/2.25 of the plain path's multiplications. It computes the same
cross-correlation as Keras (no kernel flip); results agree with the plain path to float32 rounding
(tests/test_winograd.py). The adjoint of a 3x3 stride-1 'same' convolution is itself a 3x3 stride-1
'same' convolution, with the kernel flipped in space and its channels swapped, so it takes the same path.
"""
import numba
import numpy as np

from .kernels import _jit

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


# Below this many input and output channels the 16 small matmuls run far under BLAS's peak (OpenBLAS on
# (T, 16) @ (16, 16): about 1 GFLOP/s), and im2col's one larger matmul is faster (docs/performance.md).
MIN_CHANNELS = 64


def applies(kernel_shape, strides, padding):
    """True when the Winograd path computes this convolution: 3x3 kernel, stride 1, 'same' padding."""
    return tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and padding == "same"


def worthwhile(kernel_shape):
    """True when the Winograd path is faster than im2col for this kernel (enough channels both ways)."""
    return min(kernel_shape[2], kernel_shape[3]) >= MIN_CHANNELS


def transform_kernel(kernel):
    """kernel (3, 3, C, O) -> U (16, C, O) = G g G^T for every channel pair, in the kernel's dtype."""
    u = np.einsum("ik,klco,jl->ijco", G, kernel.astype(np.float64), G)  # (4, 4, C, O)
    return np.ascontiguousarray(u.reshape(16, *kernel.shape[2:]), dtype=kernel.dtype)


def adjoint_kernel(kernel):
    """The kernel (3, 3, O, C) whose 'same' convolution is the adjoint of kernel (3, 3, C, O)'s."""
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


def _input_transform(xp, tiles_h, tiles_w, v):
    """xp (N, 2*tiles_h + 2, 2*tiles_w + 2, C), the zero-padded input -> v (16, N*tiles, C): B^T d B per tile."""
    c = xp.shape[3]
    for t in numba.prange(xp.shape[0] * tiles_h * tiles_w):
        n, rest = t // (tiles_h * tiles_w), t % (tiles_h * tiles_w)
        i, j = 2 * (rest // tiles_w), 2 * (rest % tiles_w)  # the tile's top-left cell in xp
        for ch in range(c):  # every load and store is contiguous in ch: LLVM vectorises this loop
            d00, d01, d02, d03 = xp[n, i, j, ch], xp[n, i, j + 1, ch], xp[n, i, j + 2, ch], xp[n, i, j + 3, ch]
            d10, d11, d12, d13 = (xp[n, i + 1, j, ch], xp[n, i + 1, j + 1, ch], xp[n, i + 1, j + 2, ch],
                                  xp[n, i + 1, j + 3, ch])
            d20, d21, d22, d23 = (xp[n, i + 2, j, ch], xp[n, i + 2, j + 1, ch], xp[n, i + 2, j + 2, ch],
                                  xp[n, i + 2, j + 3, ch])
            d30, d31, d32, d33 = (xp[n, i + 3, j, ch], xp[n, i + 3, j + 1, ch], xp[n, i + 3, j + 2, ch],
                                  xp[n, i + 3, j + 3, ch])
            # rows: B^T d  (r0 = d0 - d2, r1 = d1 + d2, r2 = d2 - d1, r3 = d1 - d3)
            r00, r01, r02, r03 = d00 - d20, d01 - d21, d02 - d22, d03 - d23
            r10, r11, r12, r13 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
            r20, r21, r22, r23 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
            r30, r31, r32, r33 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
            # columns: (B^T d) B, the same combination along the other axis
            v[0, t, ch], v[1, t, ch], v[2, t, ch], v[3, t, ch] = r00 - r02, r01 + r02, r02 - r01, r01 - r03
            v[4, t, ch], v[5, t, ch], v[6, t, ch], v[7, t, ch] = r10 - r12, r11 + r12, r12 - r11, r11 - r13
            v[8, t, ch], v[9, t, ch], v[10, t, ch], v[11, t, ch] = r20 - r22, r21 + r22, r22 - r21, r21 - r23
            v[12, t, ch], v[13, t, ch], v[14, t, ch], v[15, t, ch] = r30 - r32, r31 + r32, r32 - r31, r31 - r33


def _output_transform(m, tiles_h, tiles_w, bias, y):
    """m (16, N*tiles_h*tiles_w, O) -> y (N, H, W, O): A^T m A of every tile, plus bias; cut at the edges."""
    n_img, h, w, o = y.shape
    for t in numba.prange(n_img * tiles_h * tiles_w):
        n, rest = t // (tiles_h * tiles_w), t % (tiles_h * tiles_w)
        y0, x0 = 2 * (rest // tiles_w), 2 * (rest % tiles_w)
        full = y0 + 1 < h and x0 + 1 < w
        for ch in range(o):
            # rows: A^T m  (s0 = m0 + m1 + m2, s1 = m1 - m2 - m3)
            s00 = m[0, t, ch] + m[4, t, ch] + m[8, t, ch]
            s01 = m[1, t, ch] + m[5, t, ch] + m[9, t, ch]
            s02 = m[2, t, ch] + m[6, t, ch] + m[10, t, ch]
            s03 = m[3, t, ch] + m[7, t, ch] + m[11, t, ch]
            s10 = m[4, t, ch] - m[8, t, ch] - m[12, t, ch]
            s11 = m[5, t, ch] - m[9, t, ch] - m[13, t, ch]
            s12 = m[6, t, ch] - m[10, t, ch] - m[14, t, ch]
            s13 = m[7, t, ch] - m[11, t, ch] - m[15, t, ch]
            b = bias[ch]
            y00, y01 = s00 + s01 + s02 + b, s01 - s02 - s03 + b
            y10, y11 = s10 + s11 + s12 + b, s11 - s12 - s13 + b
            if full:
                y[n, y0, x0, ch], y[n, y0, x0 + 1, ch] = y00, y01
                y[n, y0 + 1, x0, ch], y[n, y0 + 1, x0 + 1, ch] = y10, y11
            else:  # an odd-sized image's last row or column of tiles
                y[n, y0, x0, ch] = y00
                if x0 + 1 < w:
                    y[n, y0, x0 + 1, ch] = y01
                if y0 + 1 < h:
                    y[n, y0 + 1, x0, ch] = y10


input_transform = _jit(_input_transform)
output_transform = _jit(_output_transform)


def conv3x3(x, u, bias, scratch):
    """x (N, H, W, C), transformed kernel u (16, C, O) -> (N, H, W, O): 3x3 stride-1 'same' conv plus bias.

    scratch(shape, dtype) hands out reusable work arrays (see layers.scratch).
    """
    n, h, w, c = x.shape
    o = u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    tiles = n * th * tw
    xp = scratch((n, 2 * th + 2, 2 * tw + 2, c), x.dtype, 2)  # (N, Hp, Wp, C): 'same' padding 1, and
    xp[:, 0], xp[:, h + 1:], xp[:, :, 0], xp[:, :, w + 1:] = 0, 0, 0, 0  # one more row/column if odd
    xp[:, 1:h + 1, 1:w + 1] = x
    v = scratch((16, tiles, c), x.dtype, 0)  # (16, T, C)
    input_transform(xp, th, tw, v)
    m = scratch((16, tiles, o), x.dtype, 1)  # (16, T, O)
    np.matmul(v, u, out=m)  # 16 matmuls (T, C) @ (C, O)
    y = np.empty((n, h, w, o), dtype=x.dtype)  # (N, H, W, O)
    output_transform(m, th, tw, np.zeros(o, x.dtype) if bias is None else bias.astype(x.dtype), y)
    return y
