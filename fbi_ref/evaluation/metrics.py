"""Metrics for explanations against ground-truth masks and against the model itself.

Every function works on a batch and returns one score per image (N,), so that the benchmark can average,
split and plot them. Heat maps are (N, H, W) arrays (see `Explanation.heatmap`), masks (N, H, W) bool.
The perturbation metrics take a `predict` callable (images (B, H, W, C) -> class probabilities (B, K)),
not a Model, so that they can be tested on hand-made functions with known answers.

    pointing_game        the heat map's maximum lies in the (dilated) mask        (Zhang et al. 2016)
    relevance_mass       share of the positive heat map inside the mask           (Arras et al. 2022)
    relevance_rank       of the K highest pixels (K = the mask's size), the share inside the mask (idem)
    class_pointing       on two-object images, the maximum lies on the asked object, not the other (0.5: blind)
    class_sensitivity    on two-object images, share of mass on the explained object rather than the other
    peak_distance        how far the maximum lies from the object; peak_in_border: near the image edge
    centre_maps, random_maps  the trivial baselines every method must beat
    bootstrap_interval   a percentile bootstrap interval of a mean over images
    perturbation_curve   deletion / insertion curves and their AUC                (Petsiuk et al. 2018)
    spearman, pearson    per-image correlation of two maps (the randomisation check, Adebayo et al. 2018)
    zero_share           sparsity: the share of exact zeros
"""
from __future__ import annotations

import numpy as np

# The pointing game's tolerance: the mask is dilated by a disk of this radius (pixels) before the test.
POINTING_TOLERANCE = 2


def positive(heatmaps):
    """The positive part max(h, 0) of heat maps, as float64 (N, H, W)."""
    return np.maximum(np.asarray(heatmaps, dtype=np.float64), 0.0)


def disk(radius):
    """The (dy, dx) offsets of a disk of `radius` pixels: dy^2 + dx^2 <= radius^2."""
    r = int(np.floor(radius))
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius]


def dilate(masks, radius):
    """Binary dilation of masks (N, H, W) by a disk of `radius` pixels (0 returns the masks unchanged)."""
    masks = np.asarray(masks, dtype=bool)
    if radius <= 0:
        return masks.copy()
    h, w = masks.shape[1:]
    r = int(np.floor(radius))
    padded = np.pad(masks, ((0, 0), (r, r), (r, r)))  # (N, H + 2r, W + 2r)
    out = np.zeros_like(masks)  # (N, H, W)
    for dy, dx in disk(radius):
        out |= padded[:, r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def pointing_game(heatmaps, masks, tolerance=POINTING_TOLERANCE):
    """Pointing game: 1 if the heat map's maximum lies inside the mask dilated by `tolerance` px, else 0.

    When several pixels share the maximum (blocky maps such as occlusion's), the score is the share of
    them inside the dilated mask: the expected hit of a random tie break. A map whose maximum is not
    positive (all zero, e.g. an empty FBI support) points nowhere and scores 0.

    heatmaps: (N, H, W); masks: (N, H, W) bool. Returns (N,) float in [0, 1].
    """
    hits, positive_peak = peak_shares(heatmaps, (dilate(masks, tolerance),))  # (N,), (N,)
    return np.where(positive_peak, hits, 0.0)


def peak_shares(heatmaps, regions):
    """For each map, the share of its maximal pixels inside each region (N, H, W) bool, and whether its
    maximum is positive: (shares (N,) per region..., positive (N,))."""
    h = np.asarray(heatmaps, dtype=np.float64)
    peak = h.reshape(len(h), -1).max(axis=1)[:, None, None]  # (N, 1, 1)
    at_max = h >= peak - 1e-6 * np.abs(peak)  # (N, H, W)
    count = at_max.sum(axis=(1, 2))  # (N,)
    return (*[(at_max & region).sum(axis=(1, 2)) / count for region in regions], peak[:, 0, 0] > 0)


def class_pointing(maps_a, maps_b, masks_a, masks_b, tolerance=POINTING_TOLERANCE):
    """Class-conditional pointing on two-object images: does the maximum lie on the object of the class asked?

    For each explanation (A's class on maps_a, B's on maps_b): 1 if the maximum lies on the asked object's
    mask (dilated by `tolerance` px) and not on the other's, 0 if on the other's and not the asked one's,
    0.5 if on both, neither, or the map has no positive value (ties: the expected value of a random tie
    break). The score per image is the mean of its two explanations: 0.5 for a map that ignores the class
    asked (it points at the same place for both), 1 when each class points at its own object. Returns (N,).
    """
    a, b = dilate(masks_a, tolerance), dilate(masks_b, tolerance)

    def asked(maps, own, other):
        on_own, on_other, positive_peak = peak_shares(maps, (own, other))
        return np.where(positive_peak, 0.5 + 0.5 * (on_own - on_other), 0.5)
    return 0.5 * (asked(maps_a, a, b) + asked(maps_b, b, a))


def peak_distance(heatmaps, masks):
    """The distance (px) from each map's first maximal pixel (row-major) to the nearest mask pixel (N,); NaN
    for a map whose maximum is not positive (it has no peak, as in the pointing game) or an empty mask."""
    h = np.asarray(heatmaps, dtype=np.float64)
    out = np.full(len(h), np.nan)
    for n in range(len(h)):
        py, px = np.unravel_index(int(np.argmax(h[n])), h[n].shape)
        ys, xs = np.nonzero(masks[n])
        if len(ys) and h[n, py, px] > 0:
            out[n] = np.sqrt(((ys - py) ** 2 + (xs - px) ** 2).min())
    return out


def peak_in_border(heatmaps, width):
    """1 where each map's first maximal pixel (row-major) lies within `width` px of the image's edge, else 0;
    NaN for a map whose maximum is not positive (no peak) (N,)."""
    h = np.asarray(heatmaps, dtype=np.float64)
    rows, cols = h.shape[1:]
    flat = h.reshape(len(h), -1)  # (N, H * W)
    py, px = np.unravel_index(np.argmax(flat, axis=1), (rows, cols))
    inside = ((py < width) | (px < width) | (py >= rows - width) | (px >= cols - width)).astype(np.float64)
    return np.where(flat.max(axis=1) > 0, inside, np.nan)


def border_share(shape, width):
    """The share of an image of `shape` (H, W) within `width` px of its edge: the chance level of peak_in_border."""
    rows, cols = shape
    return 1.0 - max(rows - 2 * width, 0) * max(cols - 2 * width, 0) / (rows * cols)


def centre_maps(n, shape, sigma):
    """n copies of a centred Gaussian exp(-r^2 / (2 sigma^2)) of `shape` (H, W): the centre-bias baseline."""
    ys, xs = (np.arange(size, dtype=np.float64) - (size - 1) / 2 for size in shape)
    g = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0 * sigma ** 2))  # (H, W)
    return np.broadcast_to(g, (n, *shape)).copy()


def random_maps(n, shape, seed):
    """n maps of independent uniform noise in [0, 1) of `shape` (H, W): the chance baseline."""
    return np.random.default_rng(seed).random((n, *shape))


def bootstrap_interval(values, resamples=1000, seed=0, level=0.95):
    """The percentile bootstrap interval (low, high) of the mean of per-image `values` (N,) at `level`:
    the images are resampled with replacement `resamples` times (NaN values are left out first)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))  # (B, N)
    means = v[picks].mean(axis=1)  # (B,)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def mass_inside(heatmaps, masks):
    """The positive heat-map mass inside each mask (N,)."""
    return (positive(heatmaps) * np.asarray(masks, dtype=bool)).sum(axis=(1, 2))


def relevance_mass(heatmaps, masks):
    """Relevance mass accuracy: the share of the positive heat map max(h, 0) that lies inside the mask.

    A map with no positive entry scores 0. heatmaps: (N, H, W); masks: (N, H, W) bool. Returns (N,).
    """
    total = positive(heatmaps).sum(axis=(1, 2))  # (N,)
    inside = mass_inside(heatmaps, masks)  # (N,)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def relevance_rank(heatmaps, masks):
    """Relevance rank accuracy (Arras et al. 2022): of the K highest heat-map pixels, K the mask's size in
    pixels, the share inside the mask. Pixels tied at the K-th value are taken by their expected share (as if
    ties were broken at random), not by index order: an all-zero map scores the mask's area share, chance.

    heatmaps: (N, H, W); masks: (N, H, W) bool, each non-empty. Returns (N,); NaN for an empty mask.
    """
    h = np.asarray(heatmaps, dtype=np.float64).reshape(len(heatmaps), -1)  # (N, P)
    m = np.asarray(masks, dtype=bool).reshape(len(masks), -1)  # (N, P)
    out = np.full(len(h), np.nan)
    for n in range(len(h)):
        k = int(m[n].sum())
        if k == 0:
            continue
        kth = np.partition(h[n], -k)[-k]  # the K-th largest value
        above, tied = h[n] > kth, h[n] == kth  # (P,), (P,)
        left = k - int(above.sum())  # the tied pixels that make up the K
        inside = int((above & m[n]).sum()) + left * (tied & m[n]).sum() / tied.sum()
        out[n] = inside / k
    return out


def own_share(heatmaps, own_masks, other_masks):
    """mass on the own object / (mass on the own object + mass on the other); 0.5 when both are 0 (N,)."""
    own, other = mass_inside(heatmaps, own_masks), mass_inside(heatmaps, other_masks)  # (N,), (N,)
    both = own + other
    return np.divide(own, both, out=np.full_like(both, 0.5), where=both > 0)


def class_sensitivity(maps_a, maps_b, masks_a, masks_b):
    """Class sensitivity on two-object images: does explaining class A point at A, and class B at B?

    maps_a: heat maps explaining the class of object A, maps_b those explaining the class of object B,
    all (N, H, W); masks_a, masks_b: the objects' masks (N, H, W) bool. For each explanation, the share
    mass_on_own / (mass_on_own + mass_on_other) of the positive heat map (0.5 when neither object gets
    any); the score is the mean of the two shares. 1 = each explanation is on its own object, 0.5 = no
    class discrimination, 0 = each explanation is on the other object. Returns (N,).
    """
    return 0.5 * (own_share(maps_a, masks_a, masks_b) + own_share(maps_b, masks_b, masks_a))


def ranks(values):
    """Ranks 0..n-1 of a 1-D array, ties given their average rank (as scipy.stats.rankdata - 1)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # (U,): the first rank of each distinct value
    return (starts + (counts - 1) / 2.0)[inverse.ravel()]


def correlation(a, b):
    """Pearson correlation of two 1-D arrays; NaN if either is constant."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else float("nan")


def pearson(maps_a, maps_b):
    """Per-image Pearson correlation of two batches of maps (N, ...) -> (N,); NaN for a constant map."""
    a = np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1)
    return np.array([correlation(u, v) for u, v in zip(a, b)])


def spearman(maps_a, maps_b):
    """Per-image Spearman rank correlation of two batches of maps (N, ...) -> (N,); NaN for a constant map.

    Ties get their average rank, so a map against itself gives 1 and against its negation -1.
    """
    a = np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1)
    return np.array([correlation(ranks(u), ranks(v)) for u, v in zip(a, b)])


def zero_share(arrays):
    """Sparsity: the share of entries exactly 0 in each item of a batch (N, ...) -> (N,)."""
    a = np.asarray(arrays)
    return (a.reshape(len(a), -1) == 0).mean(axis=1)


def gaussian_kernel(sigma):
    """A normalised 1-D Gaussian kernel of radius ceil(3 sigma)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images, sigma):
    """Blur images (N, H, W, C) with a separable Gaussian of `sigma` pixels, edges reflected."""
    x = np.asarray(images, dtype=np.float64)
    if sigma <= 0:
        return x.astype(images.dtype)
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return x.astype(images.dtype)


def pixel_order(heatmap, seed=0):
    """Pixel indices (H*W,) from the highest heat-map value down; ties in a fixed pseudo-random order."""
    flat = np.asarray(heatmap, dtype=np.float64).ravel()
    tie_break = np.random.default_rng(seed).permutation(flat.size)
    return np.lexsort((tie_break, -flat))  # the last key sorts first: by -value, then by tie_break


def step_images(start, end, order, steps):
    """steps + 1 images going from `start` to `end` (H, W, C): image i has the first i/steps of `order` from end."""
    h, w, c = start.shape
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)  # (steps + 1,) pixels taken from end
    out = np.repeat(start.reshape(1, h * w, c), steps + 1, axis=0)  # (steps + 1, H*W, C)
    flat_end = end.reshape(h * w, c)
    for i, count in enumerate(counts):
        idx = order[:count]
        out[i, idx] = flat_end[idx]
    return out.reshape(steps + 1, h, w, c)


def perturbation_curve(predict, x, heatmaps, targets, baseline, mode="deletion", steps=16, batch_size=64, seed=0,
                       ends=None):
    """Deletion or insertion curves (Petsiuk et al. 2018): the target probability as pixels change.

    predict: images (B, H, W, C) -> probabilities (B, K). x: images (N, H, W, C); heatmaps (N, H, W);
    targets (N,); baseline: the image of removed pixels (N, H, W, C), e.g. zeros or a blurred copy.
    Pixels (all channels at once) are ranked by heat map, highest first, ties in a fixed pseudo-random
    order (`seed`). 'deletion' starts from x and replaces the first i/steps of the ranking with the
    baseline; 'insertion' starts from the baseline and puts back the first i/steps of x.

    ends: optionally the known target probabilities (N, 2) of the first and last image of every curve
    (x and the baseline, which do not depend on the heat map), so that only the steps in between are run.

    Returns curves (N, steps + 1): the target probability after i = 0..steps steps (fractions i/steps).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    run = slice(None) if ends is None else slice(1, steps)  # which of the steps + 1 images to evaluate
    images = []
    for n in range(len(x)):
        order = pixel_order(heatmaps[n], seed)
        start, end = (x[n], baseline[n]) if mode == "deletion" else (baseline[n], x[n])
        images.append(step_images(start, end, order, steps)[run])  # (steps + 1 or steps - 1, H, W, C)
    stack = np.concatenate(images)  # (N * evaluated steps, H, W, C)
    probs = np.concatenate([np.asarray(predict(stack[i:i + batch_size])) for i in range(0, len(stack), batch_size)])
    per_image = probs.reshape(len(x), len(images[0]), -1)  # (N, evaluated steps, K)
    curves = per_image[np.arange(len(x)), :, np.asarray(targets)]  # (N, evaluated steps)
    if ends is None:
        return curves
    ends = np.asarray(ends, dtype=curves.dtype)
    return np.concatenate([ends[:, :1], curves, ends[:, 1:]], axis=1)


def auc(curves):
    """Area under curves (N, S + 1) sampled at the fractions 0, 1/S, ..., 1 (trapezoid rule) -> (N,)."""
    c = np.asarray(curves, dtype=np.float64)
    return (c[:, 1:] + c[:, :-1]).sum(axis=1) / (2.0 * (c.shape[1] - 1))
