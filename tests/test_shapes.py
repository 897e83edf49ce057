"""The Shapes dataset: determinism, array contracts, exact masks, the three kinds, class balance, bad input."""
import hashlib
import math

import numpy as np
import pytest
from matplotlib.path import Path

from fbi_ref.errors import InputError
from fbi_ref.shapes import CLASSES, DISTRACTORS, KINDS, MIN_SIZE, ShapesBatch, generate
from fbi_ref.shapes.draw import STAR_INNER, Shape, shape_sd

N = 60  # images per kind for the per-image checks


@pytest.fixture(scope="module", params=KINDS)
def batch(request) -> ShapesBatch:
    """N images of each kind."""
    return generate(N, seed=3, kind=request.param)


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow a boolean mask (H, W) by `steps` pixels (4-neighbourhood)."""
    for _ in range(steps):
        p = np.pad(mask, 1)
        mask = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return mask


def contrast(image: np.ndarray, mask: np.ndarray, exclude: np.ndarray) -> float:
    """RGB distance between the mean colour inside mask and the mean of a thin band just outside it."""
    band = dilate(mask, 3) & ~dilate(mask, 1) & ~exclude
    rgb = image.astype(np.float64)
    return float(np.linalg.norm(rgb[mask].mean(axis=0) - rgb[band].mean(axis=0)))


def test_classes_are_fixed_and_distractors_are_not_classes():
    assert CLASSES == ("circle", "square", "triangle", "cross", "star", "ring")
    assert not set(DISTRACTORS) & set(CLASSES)


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_same_arguments_give_the_same_bytes(kind):
    a, b = generate(8, 5, kind), generate(8, 5, kind)
    for field in ("images", "labels", "masks", "other_labels", "other_masks"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), field


@pytest.mark.parametrize("kind", KINDS)
def test_image_i_does_not_depend_on_n(kind):
    small, large = generate(5, 9, kind), generate(10, 9, kind)[:5]
    for field in ("images", "labels", "masks", "other_labels", "other_masks"):
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field), err_msg=field)


def test_seeds_and_kinds_give_different_images():
    a = generate(4, 0)
    assert not np.array_equal(a.images, generate(4, 1).images)
    assert not np.array_equal(a.images, generate(4, 0, "distractor").images)


@pytest.mark.parametrize("kind, digest", [("single", "1aa8381647076b2e"), ("pair", "ea54426f26a40cd6"),
                                          ("distractor", "e7546f26dddcc401")])
def test_pinned_bytes(kind, digest):
    """Guards cross-machine reproducibility: a change here means old held-out sets are no longer reproducible."""
    b = generate(6, 2024, kind)
    got = hashlib.sha256(b.images.tobytes() + b.masks.tobytes() + b.other_masks.tobytes()).hexdigest()[:16]
    assert got == digest


# --- array contracts ---------------------------------------------------------------------------

def test_shapes_and_dtypes(batch):
    assert len(batch) == N and batch.seed == 3 and batch.kind in KINDS
    assert batch.images.shape == (N, 64, 64, 3) and batch.images.dtype == np.uint8
    assert batch.labels.shape == (N,) and batch.labels.dtype == np.int64
    assert batch.masks.shape == (N, 64, 64) and batch.masks.dtype == bool
    assert batch.other_labels.shape == (N,) and batch.other_labels.dtype == np.int64
    assert batch.other_masks.shape == (N, 64, 64) and batch.other_masks.dtype == bool
    assert set(batch.labels.tolist()) <= set(range(len(CLASSES)))


def test_other_size_and_empty_batch():
    b = generate(3, 0, "pair", size=96)
    assert b.images.shape == (3, 96, 96, 3) and b.masks.shape == (3, 96, 96)
    assert b.masks.any(axis=(1, 2)).all() and b.other_masks.any(axis=(1, 2)).all()
    empty = generate(0, 0)
    assert empty.images.shape == (0, 64, 64, 3) and empty.labels.shape == (0,)


def test_indexing_keeps_a_batch():
    b = generate(6, 1)
    one = b[2]
    assert isinstance(one, ShapesBatch) and one.images.shape == (1, 64, 64, 3) and one.labels[0] == b.labels[2]
    assert len(b[np.array([0, 5])]) == 2


# --- masks -------------------------------------------------------------------------------------

def test_masks_are_whole_objects_inside_the_image(batch):
    area = batch.masks.sum(axis=(1, 2))                             # (N,)
    assert (area >= 80).all() and (area <= 1300).all()
    border = batch.masks[:, [0, -1], :].any(axis=(1, 2)) | batch.masks[:, :, [0, -1]].any(axis=(1, 2))
    assert not border.any()


def test_labelled_object_stands_out_from_its_surroundings(batch):
    for image, mask, other in zip(batch.images, batch.masks, batch.other_masks):
        assert contrast(image, mask, other) > 60.0


def test_single_objects_span_18_to_40_pixels():
    b = generate(120, 4)
    extents = []
    for mask in b.masks:
        rows, cols = np.nonzero(mask)
        extents.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
    assert 12 <= min(extents) and max(extents) <= 42 and max(extents) >= 30


def outline(name: str, r: float) -> np.ndarray:
    """The polygon vertices (E, 2) of class `name` with bounding radius r, in the shape's own (u, v) frame."""
    if name == "square":
        h = 0.68 * r
        return np.array([[h, h], [-h, h], [-h, -h], [h, -h]])
    if name == "cross":
        a, w = 0.95 * r, 0.3 * r
        return np.array([[a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w],
                         [-a, w], [-a, -w], [-w, -w], [-w, -a], [w, -a], [w, -w]])
    radii = [1.0] * 3 if name == "triangle" else [1.0, STAR_INNER] * 5
    step = 2 * math.pi / len(radii)
    return np.array([[q * r * math.cos(math.pi / 2 + k * step), q * r * math.sin(math.pi / 2 + k * step)]
                     for k, q in enumerate(radii)])


@pytest.mark.parametrize("name", CLASSES)
def test_masks_match_an_independent_inside_test(name):
    """sd <= 0 at each pixel centre agrees with matplotlib's point-in-polygon (or the radii for round shapes)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        r, angle = rng.uniform(9.0, 20.0), rng.uniform(0.0, 2 * math.pi)
        shape = Shape(name, cx=rng.uniform(24.0, 40.0), cy=rng.uniform(24.0, 40.0), radius=r, angle=angle)
        sd, dx, dy = shape_sd(shape, slice(0, 64), slice(0, 64))    # (64, 64)
        dx, dy = np.broadcast_arrays(dx, dy)
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = dy * math.cos(angle) - dx * math.sin(angle)
        if name in ("circle", "ring"):
            dist = np.hypot(u, v)
            inside = dist <= 0.85 * r if name == "circle" else (dist >= 0.52 * r) & (dist <= 0.92 * r)
        else:
            inside = Path(outline(name, r)).contains_points(np.stack([u.ravel(), v.ravel()], 1)).reshape(64, 64)
        np.testing.assert_array_equal(sd <= 0.0, inside)
        assert (np.hypot(dx, dy)[sd <= 0.0] <= r).all()             # the bounding radius really bounds


# --- the three kinds ---------------------------------------------------------------------------

def test_single_and_distractor_images_hold_one_class_object():
    for kind in ("single", "distractor"):
        b = generate(N, 6, kind)
        assert (b.other_labels == -1).all() and not b.other_masks.any()


def test_distractor_images_have_salient_clutter_outside_the_object():
    """Distractors are painted with the same contrast as objects: clearly more strong edges away from the
    object than in single images (whose only clutter there is the background's thin lines and noise)."""
    def edges_outside(b):
        img = b.images.astype(np.int64)
        grad = np.abs(np.diff(img, axis=2)).sum(axis=3)[:, :-1] + np.abs(np.diff(img, axis=1)).sum(axis=3)[:, :, :-1]
        far = ~np.array([dilate(m, 3) for m in b.masks])[:, :-1, :-1]
        return ((grad > 120) & far).sum(axis=(1, 2))                # (N,)
    assert edges_outside(generate(N, 6, "distractor")).mean() > 1.3 * edges_outside(generate(N, 6)).mean()


def test_pairs_hold_two_different_disjoint_contrasting_objects():
    b = generate(N, 7, "pair")
    assert (b.other_labels >= 0).all() and (b.other_labels != b.labels).all()
    assert b.other_masks.any(axis=(1, 2)).all()
    assert not (b.masks & b.other_masks).any()
    for image, mask, other in zip(b.images, b.masks, b.other_masks):
        assert contrast(image, other, mask) > 60.0


@pytest.mark.parametrize("kind", KINDS)
def test_classes_are_balanced(kind):
    b = generate(600, 8, kind)
    assert np.bincount(b.labels, minlength=6).tolist() == [100] * 6  # labels cycle: image i has class i % 6
    if kind == "pair":  # the other class is uniform over the five remaining ones
        counts = np.bincount(b.other_labels, minlength=6)
        assert counts.sum() == 600 and counts.min() >= 65 and counts.max() <= 135, counts


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, says", [
    (dict(n=-1, seed=0), "n must be >= 0"), (dict(n=2.5, seed=0), "n must be an integer"),
    (dict(n=True, seed=0), "n must be an integer"), (dict(n=2, seed=-1), "seed must be >= 0"),
    (dict(n=2, seed="0"), "seed must be an integer"), (dict(n=2, seed=0, kind="triple"), "kind must be one of"),
    (dict(n=2, seed=0, size=MIN_SIZE - 1), f"size must be >= {MIN_SIZE}"), (dict(n=2, seed=0, size=64.0), "size must be an integer"),
])
def test_bad_arguments_raise_input_error(kwargs, says):
    with pytest.raises(InputError, match=says):
        generate(**kwargs)
