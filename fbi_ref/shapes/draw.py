"""Drawing primitives for the Shapes dataset: signed distances, fill textures, backgrounds, painting.

Every shape is a signed distance field `sd` on the pixel grid, in pixels, negative inside. A pixel
belongs to the shape's mask when its centre is inside (sd <= 0); its anti-aliased opacity is
clip(0.5 - sd, 0, 1), the part of the pixel on the inner side of a straight edge, so mask = opacity >= 0.5.
Pixel arrays only ever see elementwise float64 arithmetic (+ - * / sqrt, abs, floor, min, max), which
IEEE-754 rounds the same on every CPU and SIMD width; trigonometry runs on Python scalars (math.cos/sin,
the one libm dependence). So a seed gives the same bytes on any machine; tests pin a digest to catch drift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TEXTURES = ("solid", "stripes", "checker", "noise")


@dataclass(frozen=True)
class Shape:
    """One object to draw: its name, centre, bounding radius, rotation and shape parameters."""
    name: str          # a class name ("circle", ...) or a distractor ("blob", "arc", "segment")
    cx: float          # centre, in pixels (pixel (r, c) has its centre at x = c + 0.5, y = r + 0.5)
    cy: float
    radius: float      # every pixel of the shape lies within this distance of the centre
    angle: float       # rotation, radians
    params: tuple = ()  # distractor parameters (see _distractor_sd); () for the classes


@dataclass(frozen=True)
class Fill:
    """How a shape is coloured: two RGB colours mixed by a texture pattern."""
    colour: np.ndarray   # (3,) float64, 0..255
    colour2: np.ndarray  # (3,) float64, the texture's second colour (= colour when solid)
    texture: str         # one of TEXTURES
    period: float        # stripe / checker period in pixels
    angle: float         # stripe direction, radians


SQRT3 = math.sqrt(3.0)
STAR_K1 = (math.cos(math.pi / 5), -math.sin(math.pi / 5))        # unit normal of a star's mirror line
STAR_INNER = 0.42                                                  # inner / outer radius of the star


def _box(u: np.ndarray, v: np.ndarray, hu: float, hv: float) -> np.ndarray:
    """Signed distance to the axis-aligned rectangle |u| <= hu, |v| <= hv."""
    qu, qv = np.abs(u) - hu, np.abs(v) - hv                          # (h, w) each
    ou, ov = np.maximum(qu, 0.0), np.maximum(qv, 0.0)
    return np.sqrt(ou * ou + ov * ov) + np.minimum(np.maximum(qu, qv), 0.0)


def _triangle(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to the equilateral triangle of circumradius r, apex at +v (exact; after I. Quilez)."""
    half_side = 0.5 * SQRT3 * r
    pu, pv = np.abs(u) - half_side, v + 0.5 * r                    # (h, w) each: frame at a base corner
    beyond = pu + SQRT3 * pv > 0.0                                  # nearer the slanted edge: reflect onto the base
    pu, pv = np.where(beyond, 0.5 * (pu - SQRT3 * pv), pu), np.where(beyond, 0.5 * (-SQRT3 * pu - pv), pv)
    pu = pu - np.clip(pu, -2.0 * half_side, 0.0)
    dist = np.sqrt(pu * pu + pv * pv)
    return np.where(pv < 0.0, dist, -dist)


def _star(u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to the five-pointed star of outer radius r, a point at +v (exact; after I. Quilez)."""
    k1u, k1v = STAR_K1
    pu, pv = np.abs(u), v                                           # (h, w) each
    for ku in (k1u, -k1u):                                          # fold the plane onto one spike
        fold = 2.0 * np.maximum(ku * pu + k1v * pv, 0.0)
        pu, pv = pu - fold * ku, pv - fold * k1v
    pu, pv = np.abs(pu), pv - r
    bu, bv = -STAR_INNER * k1v, STAR_INNER * k1u - 1.0              # the spike's edge direction
    h = np.clip((pu * bu + pv * bv) / (bu * bu + bv * bv), 0.0, r)
    du, dv = pu - bu * h, pv - bv * h
    dist = np.sqrt(du * du + dv * dv)
    return np.where(pv * bu - pu * bv > 0.0, dist, -dist)


def _sd(name: str, u: np.ndarray, v: np.ndarray, r: float, params: tuple) -> np.ndarray:
    """Signed distance to shape `name` of bounding radius r, in its own frame (u, v)."""
    if name == "circle":
        return np.sqrt(u * u + v * v) - 0.85 * r
    if name == "square":
        return _box(u, v, 0.68 * r, 0.68 * r)
    if name == "triangle":
        return _triangle(u, v, r)
    if name == "cross":
        return np.minimum(_box(u, v, 0.95 * r, 0.3 * r), _box(u, v, 0.3 * r, 0.95 * r))
    if name == "star":
        return _star(u, v, r)
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.72 * r) - 0.2 * r
    return _distractor_sd(name, u, v, r, params)


def _distractor_sd(name: str, u: np.ndarray, v: np.ndarray, r: float, params: tuple) -> np.ndarray:
    """Signed distance to a distractor: a lumpy "blob", an open "arc" or a thick "segment"."""
    if name == "blob":      # polar radius r0 (1 + a2 cos 2t + a3 cos(3t + phase)); a2 > 0.2 gives a waist
        a2, a3, cos3, sin3 = params
        rho = np.sqrt(u * u + v * v) + 1e-9                          # (h, w)
        c, s = u / rho, v / rho                                     # cos t, sin t
        cos_2t = c * c - s * s
        cos_3t, sin_3t = c * (4.0 * c * c - 3.0), s * (3.0 - 4.0 * s * s)
        r0 = r / (1.0 + a2 + a3)
        return rho - r0 * (1.0 + a2 * cos_2t + a3 * (cos_3t * cos3 - sin_3t * sin3))
    if name == "arc":       # circle arc of half-aperture alpha around +v, round caps
        sin_a, cos_a, half_width = params
        mid = r - half_width
        au = np.abs(u)
        beyond = cos_a * au > sin_a * v                              # outside the aperture
        eu, ev = au - sin_a * mid, v - cos_a * mid
        return np.where(beyond, np.sqrt(eu * eu + ev * ev), np.abs(np.sqrt(u * u + v * v) - mid)) - half_width
    if name == "segment":   # capsule along u: half length r - half_width
        (half_width,) = params
        qu = np.maximum(np.abs(u) - (r - half_width), 0.0)
        return np.sqrt(qu * qu + v * v) - half_width
    raise ValueError(f"unknown shape {name!r}")


def _crop(shape: Shape, size: int) -> tuple[slice, slice]:
    """The rows and columns of a size x size image that can hold any pixel of the shape."""
    pad = shape.radius + 1.5
    rows = slice(max(0, int(shape.cy - pad)), min(size, int(shape.cy + pad) + 1))
    cols = slice(max(0, int(shape.cx - pad)), min(size, int(shape.cx + pad) + 1))
    return rows, cols


def shape_sd(shape: Shape, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shape's signed distance on the pixel window (rows, cols), with the window's (dx, dy) offsets."""
    dx = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :] + 0.5 - shape.cx   # (1, w)
    dy = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None] + 0.5 - shape.cy   # (h, 1)
    ca, sa = math.cos(shape.angle), math.sin(shape.angle)
    u, v = dx * ca + dy * sa, dy * ca - dx * sa                    # (h, w) each, the shape's own frame
    return _sd(shape.name, u, v, shape.radius, shape.params), dx, dy


def _texture(fill: Fill, dx: np.ndarray, dy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mixing weight of colour2, 0 or 1 per pixel (noise: uniform in 0..1), on the window."""
    shape = np.broadcast_shapes(dx.shape, dy.shape)
    if fill.texture == "solid":
        return np.zeros(shape)
    if fill.texture == "noise":
        return rng.random(shape)                                    # (h, w)
    ca, sa = math.cos(fill.angle), math.sin(fill.angle)
    a = np.floor((dx * ca + dy * sa) / (0.5 * fill.period))         # (h, w)
    if fill.texture == "stripes":
        return a % 2.0
    b = np.floor((dy * ca - dx * sa) / (0.5 * fill.period))
    return (a + b) % 2.0


def paint(img: np.ndarray, shape: Shape, fill: Fill, rng: np.random.Generator) -> np.ndarray:
    """Paint an anti-aliased, textured shape into img (3, H, W) float64 in place; return its mask (H, W)."""
    size = img.shape[1]
    rows, cols = _crop(shape, size)
    sd, dx, dy = shape_sd(shape, rows, cols)                        # (h, w)
    alpha = np.clip(0.5 - sd, 0.0, 1.0)                             # (h, w)
    t = _texture(fill, dx, dy, rng)                                 # (h, w)
    c1, c2 = fill.colour[:, None, None], fill.colour2[:, None, None]  # (3, 1, 1) each
    window = img[:, rows, cols]                                     # (3, h, w) view
    window += alpha * (c1 + t * (c2 - c1) - window)
    mask = np.zeros((size, size), dtype=bool)                       # (H, W)
    mask[rows, cols] = sd <= 0.0
    return mask


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background (3, H, W) float64: colour gradient + smooth noise + thin straight lines."""
    # Gradient between two colours at most 90 apart per channel plus smooth noise, both sampled on a
    # coarse (k+1) x (k+1) grid of nodes and bilinearly upsampled (which reproduces the linear gradient).
    k = int(rng.integers(3, 7))
    nodes = np.arange(k + 1, dtype=np.float64) * (1.0 / k) - 0.5     # (k+1,) node positions / size
    c0 = rng.uniform(0.0, 255.0, 3)[:, None, None]                  # (3, 1, 1)
    c1 = np.clip(c0 + rng.uniform(-90.0, 90.0, (3, 1, 1)), 0.0, 255.0)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    t = nodes[None, :] * math.cos(angle) + nodes[:, None] * math.sin(angle) + 0.5  # (k+1, k+1)
    grid = c0 + t * (c1 - c0) + rng.uniform(-1.0, 1.0, (3, k + 1, k + 1)) * rng.uniform(12.0, 30.0)
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (k / size)    # (W,) pixel centres in node units
    i0 = np.floor(pos).astype(np.int64)                             # (W,)
    f = pos - i0                                                    # (W,)
    rows = grid[:, i0] + f[:, None] * (grid[:, i0 + 1] - grid[:, i0])  # (3, H, k+1)
    steps = rows[:, :, 1:] - rows[:, :, :-1]                        # (3, H, k)
    img = np.ascontiguousarray(rows[:, :, i0] + f * steps[:, :, i0])  # (3, H, W)
    flat = img.reshape(3, -1)                                       # (3, H*W) view
    # Thin straight lines right across the image, composited only where they cover a pixel.
    xy = np.arange(size, dtype=np.float64) + 0.5 - 0.5 * size       # (W,) pixel centres from the middle
    for _ in range(int(rng.integers(1, 5))):
        px, py = rng.uniform(-0.4, 0.4, 2) * size
        la = rng.uniform(0.0, math.pi)
        half_width = rng.uniform(0.4, 0.9) * size / 64.0
        colour, opacity = rng.uniform(0.0, 255.0, (3, 1)), rng.uniform(0.5, 0.9)  # (3, 1)
        cover = 0.5 + half_width - np.abs((xy[None, :] - px) * math.sin(la) - (xy[:, None] - py) * math.cos(la))
        hit = np.flatnonzero(cover > 0.0)                           # (P,) the pixels the line touches
        alpha = np.minimum(cover.ravel()[hit], 1.0) * opacity       # (P,)
        flat[:, hit] += alpha * (colour - flat[:, hit])             # (3, P)
    return img
