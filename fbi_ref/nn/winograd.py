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

from fbi_ref.nn.kernels import jit

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


# Below this many input and output channels the 16 small matmuls run far under BLAS's peak (OpenBLAS on
# (T, 16) @ (16, 16): about 1 GFLOP/s), and im2col's one larger matmul is faster (docs/performance.md).
MIN_CHANNELS = 64

# The transformed tiles (16, T, C) and their products (16, T, O) are made in chunks of tiles of at most this
# size each: for VGG16's first block the whole image would need 2 x 51 MB.
TILES_BUDGET_BYTES = 8 * 2**20


def applies(kernel_shape, strides, padding):
    """True when the Winograd path computes this convolution: 3x3 kernel, stride 1, 'same' padding."""
    return tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and padding == "same"


def worthwhile(kernel_shape):
    """True when the Winograd path is faster than im2col for this kernel (enough channels both ways)."""
    return min(kernel_shape[2], kernel_shape[3]) >= MIN_CHANNELS


def _kernel_transform(kernel, u):
    """kernel (3, 3, C, O) -> u (16, C, O): U = G g G^T for every channel pair (row i, column j at 4 i + j)."""
    c = kernel.shape[2]
    for ch in numba.prange(c):
        for o in range(kernel.shape[3]):
            g00, g01, g02 = kernel[0, 0, ch, o], kernel[0, 1, ch, o], kernel[0, 2, ch, o]
            g10, g11, g12 = kernel[1, 0, ch, o], kernel[1, 1, ch, o], kernel[1, 2, ch, o]
            g20, g21, g22 = kernel[2, 0, ch, o], kernel[2, 1, ch, o], kernel[2, 2, ch, o]
            # rows: G g  (t0 = g0, t1 = (g0 + g1 + g2) / 2, t2 = (g0 - g1 + g2) / 2, t3 = g2)
            t10, t11, t12 = 0.5 * (g00 + g10 + g20), 0.5 * (g01 + g11 + g21), 0.5 * (g02 + g12 + g22)
            t20, t21, t22 = 0.5 * (g00 - g10 + g20), 0.5 * (g01 - g11 + g21), 0.5 * (g02 - g12 + g22)
            # columns: (G g) G^T, the same combination along the other axis
            put_row(u, 0, ch, o, g00, g01, g02)
            put_row(u, 1, ch, o, t10, t11, t12)
            put_row(u, 2, ch, o, t20, t21, t22)
            put_row(u, 3, ch, o, g20, g21, g22)


def _put_row(u, i, ch, o, r0, r1, r2):
    """Row i of U at (ch, o): the row (r0, r1, r2) of G g times G^T."""
    u[4 * i, ch, o] = r0
    u[4 * i + 1, ch, o] = 0.5 * (r0 + r1 + r2)
    u[4 * i + 2, ch, o] = 0.5 * (r0 - r1 + r2)
    u[4 * i + 3, ch, o] = r2


put_row = numba.njit(cache=True)(_put_row)


def transform_kernel(kernel):
    """kernel (3, 3, C, O) -> U (16, C, O) = G g G^T for every channel pair, in the kernel's dtype."""
    u = np.empty((16, *kernel.shape[2:]), dtype=kernel.dtype)  # (16, C, O)
    kernel_transform(np.ascontiguousarray(kernel), u)
    return u


def adjoint_kernel(kernel):
    """The kernel (3, 3, O, C) whose 'same' convolution is the adjoint of kernel (3, 3, C, O)'s."""
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


# The adjoint's transformed kernel needs no second transform: flipping g in space is G J = P G, with P
# the swap of rows 0 and 3, so transform(adjoint_kernel(g)) = P U P^T with C and O swapped. Position
# k = 4 i + j of the adjoint's U is position ADJOINT_POSITION[k] of U, transposed.
_SWAP = (3, 1, 2, 0)
ADJOINT_POSITION = tuple(4 * _SWAP[i] + _SWAP[j] for i in range(4) for j in range(4))


def adjoint_transformed(u):
    """U (16, C, O) of a kernel -> (16, O, C): the transformed adjoint kernel, as views of U (no copy)."""
    return [u[k].T for k in ADJOINT_POSITION]


def _input_transform(xp, tiles_h, tiles_w, first, v):
    """xp (N, 2*tiles_h + 2, 2*tiles_w + 2, C), the zero-padded input -> v (16, T, C): B^T d B of the T tiles
    from number `first` on (tiles numbered image by image, row-major)."""
    c = xp.shape[3]
    for k in numba.prange(v.shape[1]):
        t = first + k
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
            v[0, k, ch], v[1, k, ch], v[2, k, ch], v[3, k, ch] = r00 - r02, r01 + r02, r02 - r01, r01 - r03
            v[4, k, ch], v[5, k, ch], v[6, k, ch], v[7, k, ch] = r10 - r12, r11 + r12, r12 - r11, r11 - r13
            v[8, k, ch], v[9, k, ch], v[10, k, ch], v[11, k, ch] = r20 - r22, r21 + r22, r22 - r21, r21 - r23
            v[12, k, ch], v[13, k, ch], v[14, k, ch], v[15, k, ch] = r30 - r32, r31 + r32, r32 - r31, r31 - r33


def _output_transform(m, tiles_h, tiles_w, first, bias, y):
    """m (16, T, O) of the T tiles from number `first` on -> their cells of y (N, H, W, O): A^T m A, plus bias;
    cut at the edges."""
    n_img, h, w, o = y.shape
    for k in numba.prange(m.shape[1]):
        t = first + k
        n, rest = t // (tiles_h * tiles_w), t % (tiles_h * tiles_w)
        y0, x0 = 2 * (rest // tiles_w), 2 * (rest % tiles_w)
        full = y0 + 1 < h and x0 + 1 < w
        for ch in range(o):
            # rows: A^T m  (s0 = m0 + m1 + m2, s1 = m1 - m2 - m3)
            s00 = m[0, k, ch] + m[4, k, ch] + m[8, k, ch]
            s01 = m[1, k, ch] + m[5, k, ch] + m[9, k, ch]
            s02 = m[2, k, ch] + m[6, k, ch] + m[10, k, ch]
            s03 = m[3, k, ch] + m[7, k, ch] + m[11, k, ch]
            s10 = m[4, k, ch] - m[8, k, ch] - m[12, k, ch]
            s11 = m[5, k, ch] - m[9, k, ch] - m[13, k, ch]
            s12 = m[6, k, ch] - m[10, k, ch] - m[14, k, ch]
            s13 = m[7, k, ch] - m[11, k, ch] - m[15, k, ch]
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


kernel_transform = jit(_kernel_transform)
input_transform = jit(_input_transform)
output_transform = jit(_output_transform)


def conv3x3(x, u, bias, scratch):
    """x (N, H, W, C), transformed kernel u (16, C, O) -> (N, H, W, O): 3x3 stride-1 'same' conv plus bias.

    u may also be a list of 16 (C, O) arrays, e.g. `adjoint_transformed(U)` for the adjoint.
    scratch(shape, dtype) hands out reusable work arrays (see layers.scratch).
    """
    n, h, w, c = x.shape
    o = u[0].shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    tiles = n * th * tw
    xp = scratch((n, 2 * th + 2, 2 * tw + 2, c), x.dtype, 2)  # (N, Hp, Wp, C): 'same' padding 1, and
    xp[:, 0], xp[:, h + 1:], xp[:, :, 0], xp[:, :, w + 1:] = 0, 0, 0, 0  # one more row/column if odd
    xp[:, 1:h + 1, 1:w + 1] = x
    y = np.empty((n, h, w, o), dtype=x.dtype)  # (N, H, W, O)
    bias = np.zeros(o, x.dtype) if bias is None else bias.astype(x.dtype)  # (O,)
    step = max(1, TILES_BUDGET_BYTES // (16 * max(c, o) * x.itemsize))  # tiles per chunk
    for first in range(0, tiles, step):
        count = min(step, tiles - first)
        v = scratch((16, count, c), x.dtype, 0)  # (16, T, C)
        input_transform(xp, th, tw, first, v)
        m = scratch((16, count, o), x.dtype, 1)  # (16, T, O)
        if isinstance(u, np.ndarray):
            np.matmul(v, u, out=m)  # 16 matmuls (T, C) @ (C, O)
        else:
            for k in range(16):  # transposed views: BLAS reads them as they are, as fast as a copy
                np.matmul(v[k], u[k], out=m[k])  # (T, C) @ (C, O)
        output_transform(m, th, tw, first, bias, y)
    return y
