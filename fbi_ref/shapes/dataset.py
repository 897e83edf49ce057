"""Shapes: a procedural, deterministic dataset of six shape classes with exact ground-truth masks.

    batch = generate(10_000, seed=0)                    # kind="single": one object per image
    batch.images   # (N, 64, 64, 3) uint8 RGB;  batch.labels (N,) int64, index into CLASSES
    batch.masks    # (N, 64, 64) bool: the pixels of the labelled object
    pairs = generate(600, seed=1, kind="pair")           # + other_labels / other_masks: the second object

Each image is a cluttered background (colour gradient, smooth noise, thin lines) with objects of random
position, size (diameter about 18-40 px at size 64), rotation, colour and fill texture (solid, stripes,
checker, noise). Every object's colour is at least MIN_CONTRAST (RGB distance) away from the mean of the
background around it, so the shape, not a pixel value, decides the class. Objects never overlap, so each
mask is exactly the object's visible pixels: the pixels whose centre lies inside the shape.

Kinds: "single" (one object); "pair" (two objects of different classes, disjoint; label = one of them,
the other's class and mask in other_labels / other_masks); "distractor" (one object plus 1-3 non-class
distractors, fewer when there is no room: lumpy blobs, open arcs, thick short segments). Labels cycle:
image i shows class i % 6, so any n that is a multiple of 6 is exactly balanced (shuffle before training).
Image i depends only on (seed, kind, i, size), through its own np.random.SeedSequence, so
generate(5) == generate(10)[:5].
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.shapes.draw import TEXTURES, Fill, Shape, background, paint

CLASSES = ("circle", "square", "triangle", "cross", "star", "ring")
KINDS = ("single", "pair", "distractor")
DISTRACTORS = ("blob", "arc", "segment")
MIN_SIZE = 32            # smallest image side: objects need about 18 px plus room to move
MIN_CONTRAST = 100.0     # least RGB distance between an object's colours and its local background mean
GAP = 2.0                # least distance, in pixels, between the bounding circles of two objects


@dataclass(frozen=True)
class ShapesBatch:
    """N generated images with their labels and ground-truth masks."""
    images: np.ndarray        # (N, H, W, 3) uint8 RGB
    labels: np.ndarray        # (N,) int64, index into CLASSES
    masks: np.ndarray         # (N, H, W) bool, the labelled object's pixels
    other_labels: np.ndarray  # (N,) int64, the second object's class ("pair" only), else -1
    other_masks: np.ndarray   # (N, H, W) bool, the second object's pixels ("pair" only), else all False
    kind: str
    seed: int

    def __len__(self) -> int:
        """The number of images."""
        return len(self.labels)

    def __getitem__(self, index) -> ShapesBatch:
        """The sub-batch for a slice, an index array or a single index (kept as a batch of one)."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return replace(self, images=self.images[index], labels=self.labels[index], masks=self.masks[index],
                       other_labels=self.other_labels[index], other_masks=self.other_masks[index])


def generate(n: int, seed: int, kind: str = "single", size: int = 64) -> ShapesBatch:
    """Generate n Shapes images of one kind ("single", "pair" or "distractor"), reproducibly.

    Image i is drawn from its own random stream, np.random.SeedSequence([seed, kind index, i]), so it
    is the same whatever n is, and the same bytes on every machine. Its label is i % 6 (labels cycle
    through CLASSES). size is the image side in pixels (all lengths scale with size / 64).

    Returns a ShapesBatch: images (N, size, size, 3) uint8 RGB, labels (N,) int64, masks (N, size,
    size) bool of the labelled object, and for kind="pair" the other object's class and mask
    (other_labels -1 and other_masks all False otherwise).

    Raises InputError for n < 0, a negative seed, an unknown kind, or size < MIN_SIZE.
    """
    n, seed, size = _count(n, "n", 0), _count(seed, "seed", 0), _count(size, "size", MIN_SIZE)
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    images = np.zeros((n, size, size, 3), dtype=np.uint8)           # (N, H, W, 3)
    labels = np.zeros(n, dtype=np.int64)                            # (N,)
    masks = np.zeros((n, size, size), dtype=bool)                   # (N, H, W)
    other_labels = np.full(n, -1, dtype=np.int64)                   # (N,)
    other_masks = np.zeros((n, size, size), dtype=bool)             # (N, H, W)
    for i in range(n):
        images[i], labels[i], masks[i], other_labels[i], other_masks[i] = _render(seed, kind, i, size)
    return ShapesBatch(images, labels, masks, other_labels, other_masks, kind, seed)


def _render(seed: int, kind: str, i: int, size: int) -> tuple:
    """Image i of (seed, kind): (image (H, W, 3) uint8, label, mask (H, W), other label, other mask (H, W))."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, KINDS.index(kind), i]))
    scale = size / 64.0
    label, other_label = i % len(CLASSES), -1
    img = background(rng, size)                                     # (3, H, W) float64
    bg = img.copy()                                                 # the background alone, for contrast
    if kind == "pair":  # two smaller objects, so that both fit without overlapping
        other_label = (label + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)
        circles = _layout(rng, size, [rng.uniform(9.0, 14.0) * scale, rng.uniform(9.0, 14.0) * scale])
    else:
        circles = _layout(rng, size, [rng.uniform(9.0, 20.0 if kind == "single" else 17.0) * scale])
    mask = _paint_object(rng, img, bg, CLASSES[label], circles[0])  # (H, W)
    other_mask = np.zeros((size, size), dtype=bool)                 # (H, W)
    if kind == "pair":
        other_mask = _paint_object(rng, img, bg, CLASSES[other_label], circles[1])
    if kind == "distractor":
        for _ in range(int(rng.integers(1, 4))):
            shape = _distractor(rng, circles, size)
            if shape is not None:
                circles.append((shape.cx, shape.cy, shape.radius))
                paint(img, shape, _fill(rng, bg, circles[-1], size), rng)
    image = np.rint(np.clip(img, 0.0, 255.0)).astype(np.uint8).transpose(1, 2, 0)  # (H, W, 3)
    return image, label, mask, other_label, other_mask


def _count(value, name: str, minimum: int) -> int:
    """value as a Python int >= minimum, else InputError."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def _free_spot(rng: np.random.Generator, size: int, radius: float, taken: list) -> tuple | None:
    """A centre (x, y) for a bounding circle of `radius` inside the image, clear of `taken`; None if none found."""
    for _ in range(100):
        x, y = rng.uniform(radius + 1.0, size - radius - 1.0, 2)
        if all(math.hypot(x - tx, y - ty) >= radius + tr + GAP for tx, ty, tr in taken):
            return float(x), float(y)
    return None


def _layout(rng: np.random.Generator, size: int, radii: list) -> list:
    """Non-overlapping bounding circles [(x, y, radius), ...] for the given radii, shrinking them if needed."""
    while True:
        taken = []
        for radius in radii:
            spot = _free_spot(rng, size, radius, taken)
            if spot is None:
                break
            taken.append((*spot, radius))
        if len(taken) == len(radii):
            return taken
        radii = [0.9 * r for r in radii]


def _paint_object(rng: np.random.Generator, img: np.ndarray, bg: np.ndarray, name: str, circle: tuple) -> np.ndarray:
    """Paint class `name` with a random rotation and fill into the bounding circle (x, y, r); return its mask."""
    shape = Shape(name, *circle, rng.uniform(0.0, 2.0 * math.pi))
    return paint(img, shape, _fill(rng, bg, circle, img.shape[1]), rng)


def _distractor(rng: np.random.Generator, taken: list, size: int) -> Shape | None:
    """A random distractor clear of the `taken` bounding circles, or None if there is no room."""
    scale = size / 64.0
    name = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if name == "blob":
        radius = rng.uniform(6.0, 10.0) * scale
        phase = rng.uniform(0.0, 2.0 * math.pi)
        params = (rng.uniform(0.25, 0.4), rng.uniform(0.05, 0.15), math.cos(phase), math.sin(phase))
    elif name == "arc":
        radius = rng.uniform(7.0, 12.0) * scale
        half_aperture = rng.uniform(50.0, 100.0) * math.pi / 180.0
        params = (math.sin(half_aperture), math.cos(half_aperture), rng.uniform(1.0, 1.6) * scale)
    else:
        radius = rng.uniform(6.0, 11.0) * scale
        params = (rng.uniform(1.5, 2.5) * scale,)
    spot = _free_spot(rng, size, radius, taken)
    return None if spot is None else Shape(name, *spot, radius, angle, params)


def _fill(rng: np.random.Generator, bg: np.ndarray, circle: tuple, size: int) -> Fill:
    """A random textured fill whose colours all keep MIN_CONTRAST from the background around `circle`."""
    x, y, radius = circle
    rows = slice(max(0, int(y - radius)), int(y + radius) + 1)
    cols = slice(max(0, int(x - radius)), int(x + radius) + 1)
    local = bg[:, rows, cols].reshape(3, -1).mean(axis=1)           # (3,) local background mean
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    for _ in range(50):
        colour = rng.uniform(0.0, 255.0, 3)                         # (3,)
        mix = 0.0 if texture == "solid" else rng.uniform(0.3, 0.5)
        colour2 = colour + mix * (rng.uniform(0.0, 255.0, 3) - colour)  # (3,)
        if _segment_distance(local, colour, colour2) >= MIN_CONTRAST:
            break
    else:  # black or white, whichever is farther from the background
        colour = np.zeros(3) if local.sum() > 3 * 127.5 else np.full(3, 255.0)
        colour2 = colour
    period = rng.uniform(4.0, 8.0) * size / 64.0
    return Fill(colour, colour2, texture, period, rng.uniform(0.0, math.pi))


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance from point p to the segment [a, b] (all (3,) colours)."""
    ab, ap = (b - a).tolist(), (p - a).tolist()
    denom = sum(c * c for c in ab)
    t = 0.0 if denom == 0.0 else min(1.0, max(0.0, sum(c * e for c, e in zip(ap, ab)) / denom))
    return math.sqrt(sum((c - t * e) ** 2 for c, e in zip(ap, ab)))
