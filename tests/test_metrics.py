"""The benchmark's metrics on hand-made cases whose answers are known."""
import numpy as np
import pytest

from fbi_ref.evaluation import metrics as M


def square_mask(size=8, top=2, left=2, side=3):
    """A batch of one (1, size, size) mask holding a side x side square."""
    mask = np.zeros((1, size, size), dtype=bool)
    mask[0, top:top + side, left:left + side] = True
    return mask


def linear_drop_predict(baseline_value=0.0):
    """A fake model whose class-0 probability is the share of pixels that still differ from the baseline."""
    def predict(x):
        kept = (x != baseline_value).any(axis=-1).mean(axis=(1, 2))  # (B,)
        return np.stack([kept, 1.0 - kept], axis=1)  # (B, 2)
    return predict


def region_predict(mask):
    """A fake model whose class-0 probability is the share of the mask's pixels that are still 1."""
    def predict(x):
        alive = (x[..., 0] == 1.0) & mask  # (B, H, W)
        p = alive.sum(axis=(1, 2)) / mask.sum()
        return np.stack([p, 1.0 - p], axis=1)
    return predict


# Pointing game and relevance mass

def test_map_equal_to_the_mask_scores_one_on_pointing_and_mass():
    mask = square_mask()
    heat = mask.astype(float)
    assert M.pointing_game(heat, mask, tolerance=0)[0] == 1.0
    assert M.relevance_mass(heat, mask)[0] == 1.0


def test_uniform_map_scores_the_mask_area_share_in_relevance_mass():
    mask = square_mask(size=8, side=3)
    assert M.relevance_mass(np.ones((1, 8, 8)), mask)[0] == pytest.approx(9 / 64)


def test_relevance_mass_ignores_negative_relevance_and_scores_zero_without_positive_mass():
    mask = square_mask()
    heat = np.where(mask, 1.0, -5.0)
    assert M.relevance_mass(heat, mask)[0] == 1.0
    assert M.relevance_mass(-np.ones((1, 8, 8)), mask)[0] == 0.0
    assert M.relevance_mass(np.zeros((1, 8, 8)), mask)[0] == 0.0


def test_pointing_game_tolerance_is_a_disk_dilation():
    mask = square_mask(size=12, top=4, left=4, side=3)  # rows and columns 4..6
    heat = np.zeros((1, 12, 12))
    heat[0, 8, 5] = 1.0  # two pixels below the square
    assert M.pointing_game(heat, mask, tolerance=0)[0] == 0.0
    assert M.pointing_game(heat, mask, tolerance=2)[0] == 1.0
    heat[0, 8, 5], heat[0, 8, 8] = 0.0, 1.0  # diagonal (2, 2) from the corner: distance 2.83 > 2
    assert M.pointing_game(heat, mask, tolerance=2)[0] == 0.0


def test_pointing_game_shares_ties_and_scores_zero_for_an_empty_map():
    mask = square_mask(size=8, top=0, left=0, side=2)
    heat = np.zeros((1, 8, 8))
    heat[0, 0, 0] = heat[0, 7, 7] = 1.0  # two maxima, one inside
    assert M.pointing_game(heat, mask, tolerance=0)[0] == 0.5
    assert M.pointing_game(np.zeros((1, 8, 8)), mask)[0] == 0.0


def test_dilate_by_one_is_the_four_neighbourhood():
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 2, 2] = True
    expected = np.zeros((5, 5), dtype=bool)
    expected[[1, 2, 2, 2, 3], [2, 1, 2, 3, 2]] = True
    np.testing.assert_array_equal(M.dilate(mask, 1)[0], expected)
    np.testing.assert_array_equal(M.dilate(mask, 0), mask)


# Class sensitivity

def two_masks():
    a = square_mask(size=10, top=1, left=1, side=3)
    b = square_mask(size=10, top=5, left=5, side=4)
    return a, b


def test_class_sensitivity_of_maps_equal_to_each_mask_is_one():
    a, b = two_masks()
    assert M.class_sensitivity(a.astype(float), b.astype(float), a, b)[0] == 1.0


def test_class_sensitivity_of_a_class_blind_map_is_one_half_and_of_swapped_maps_zero():
    a, b = two_masks()
    blind = a * 1.0 + b * 9 / 16  # the same mass, 9, on both objects, whichever class is explained
    assert M.class_sensitivity(blind, blind, a, b)[0] == 0.5
    assert M.class_sensitivity(b.astype(float), a.astype(float), a, b)[0] == 0.0
    assert M.class_sensitivity(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)), a, b)[0] == 0.5


# Correlations and sparsity

def test_spearman_of_a_map_with_itself_is_one_and_with_its_negation_minus_one():
    heat = np.random.default_rng(0).standard_normal((3, 6, 6))
    np.testing.assert_allclose(M.spearman(heat, heat), 1.0)
    np.testing.assert_allclose(M.spearman(heat, -heat), -1.0)
    np.testing.assert_allclose(M.pearson(heat, heat), 1.0)


def test_spearman_is_invariant_to_monotone_maps_and_handles_ties():
    heat = np.random.default_rng(1).standard_normal((2, 5, 5))
    np.testing.assert_allclose(M.spearman(heat, np.exp(3 * heat)), 1.0)
    np.testing.assert_allclose(M.ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])
    assert np.isnan(M.spearman(heat[:1], np.zeros((1, 5, 5)))[0])


def test_zero_share_counts_exact_zeros():
    a = np.zeros((2, 4, 4, 3))
    a[0, 0, 0, 0] = 1.0
    np.testing.assert_allclose(M.zero_share(a), [1 - 1 / 48, 1.0])


# Deletion and insertion

def test_deletion_auc_of_a_linearly_dropping_probability_is_one_half():
    x = np.ones((2, 8, 8, 3))
    heat = np.random.default_rng(2).standard_normal((2, 8, 8))
    curves = M.perturbation_curve(linear_drop_predict(), x, heat, [0, 0], np.zeros_like(x), "deletion", steps=16)
    np.testing.assert_allclose(curves[0], np.linspace(1, 0, 17))
    np.testing.assert_allclose(M.auc(curves), 0.5)


def test_insertion_auc_of_a_linearly_rising_probability_is_one_half():
    x = np.ones((1, 8, 8, 3))
    curves = M.perturbation_curve(linear_drop_predict(), x, np.zeros((1, 8, 8)), [0], np.zeros_like(x),
                                  "insertion", steps=8)
    np.testing.assert_allclose(curves[0], np.linspace(0, 1, 9))
    np.testing.assert_allclose(M.auc(curves), 0.5)


def test_deletion_follows_the_heat_map_order():
    mask = square_mask(size=8, top=0, left=0, side=4)  # a quarter of the image decides the class
    x = np.ones((1, 8, 8, 1))
    predict = region_predict(mask[0])
    good = M.auc(M.perturbation_curve(predict, x, mask.astype(float), [0], np.zeros_like(x), steps=4))[0]
    bad = M.auc(M.perturbation_curve(predict, x, -mask.astype(float), [0], np.zeros_like(x), steps=4))[0]
    assert good == pytest.approx(0.125)  # the probability is gone after the first quarter
    assert bad == pytest.approx(0.875)  # the probability stays until the last quarter
    insertion = M.auc(M.perturbation_curve(predict, x, mask.astype(float), [0], np.zeros_like(x), "insertion", 4))
    assert insertion[0] == pytest.approx(0.875)


def test_known_ends_give_the_same_curves_without_evaluating_them():
    x = np.random.default_rng(3).uniform(0.5, 1.0, (2, 6, 6, 3))
    heat = np.random.default_rng(4).standard_normal((2, 6, 6))
    calls = []

    def predict(images):
        calls.append(len(images))
        p = images.mean(axis=(1, 2, 3))
        return np.stack([p, 1 - p], axis=1)
    base = M.gaussian_blur(x, 1.0)
    full = M.perturbation_curve(predict, x, heat, [0, 1], base, "insertion", steps=6)
    evaluated = sum(calls)
    ends = full[:, [0, -1]]
    short = M.perturbation_curve(predict, x, heat, [0, 1], base, "insertion", steps=6, ends=ends)
    np.testing.assert_allclose(short, full)
    assert evaluated == 2 * 7 and sum(calls) - evaluated == 2 * 5


def test_auc_of_a_constant_curve_is_the_constant():
    np.testing.assert_allclose(M.auc(np.full((2, 11), 0.3)), 0.3)


def test_gaussian_blur_keeps_constants_and_the_mean():
    flat = np.full((1, 9, 9, 3), 7.0)
    np.testing.assert_allclose(M.gaussian_blur(flat, 2.0), flat)
    spike = np.zeros((1, 21, 21, 1))
    spike[0, 10, 10] = 1.0
    blurred = M.gaussian_blur(spike, 1.5)
    assert blurred.sum() == pytest.approx(1.0)
    assert blurred[0, 10, 10, 0] == blurred.max() < 1.0


# Class-conditional pointing, where the peak lies, the trivial baselines, the bootstrap

def two_objects():
    """Masks of two objects on a 12 x 12 image: A at the top left, B at the bottom right (1, 12, 12) each."""
    a, b = np.zeros((1, 12, 12), dtype=bool), np.zeros((1, 12, 12), dtype=bool)
    a[0, 1:4, 1:4], b[0, 8:11, 8:11] = True, True
    return a, b


def peak_at(y, x, size=12):
    """A (1, size, size) map with a single maximum at (y, x)."""
    m = np.zeros((1, size, size))
    m[0, y, x] = 1.0
    return m


@pytest.mark.parametrize("peak_for_a, peak_for_b, expected", [
    ((2, 2), (9, 9), 1.0),   # each class points at its own object
    ((9, 9), (2, 2), 0.0),   # each at the other
    ((2, 2), (2, 2), 0.5),   # the same place whatever the class: blind
    ((6, 6), (6, 6), 0.5),   # on neither object
])
def test_class_pointing_is_one_for_each_own_object_and_one_half_when_blind(peak_for_a, peak_for_b, expected):
    a, b = two_objects()
    score = M.class_pointing(peak_at(*peak_for_a), peak_at(*peak_for_b), a, b, tolerance=0)
    assert score[0] == expected


def test_class_pointing_of_a_map_without_positive_values_is_blind_and_ties_share():
    a, b = two_objects()
    assert M.class_pointing(-peak_at(2, 2), -peak_at(9, 9), a, b, 0)[0] == 0.5
    tied = peak_at(2, 2) + peak_at(9, 9)  # two maximal pixels, one on each object: a coin flip
    assert M.class_pointing(tied, tied, a, b, 0)[0] == 0.5
    assert M.class_pointing(peak_at(4, 3), peak_at(9, 9), a, b, tolerance=0)[0] == 0.75  # just below A
    assert M.class_pointing(peak_at(4, 3), peak_at(9, 9), a, b, tolerance=1)[0] == 1.0   # within 1 px of A


def test_peak_distance_and_border_are_measured_from_the_first_maximum():
    a, _ = two_objects()
    assert M.peak_distance(peak_at(2, 2), a)[0] == 0.0
    assert M.peak_distance(peak_at(6, 7), a)[0] == pytest.approx(np.hypot(6 - 3, 7 - 3))
    assert M.peak_in_border(peak_at(0, 6), 2)[0] == 1.0 and M.peak_in_border(peak_at(11, 6), 1)[0] == 1.0
    assert M.peak_in_border(peak_at(5, 6), 2)[0] == 0.0 and M.peak_in_border(peak_at(0, 6), 0)[0] == 0.0


def test_a_map_without_a_positive_peak_has_no_peak_to_place():
    a, _ = two_objects()
    empty = np.zeros_like(peak_at(2, 2))
    assert np.isnan(M.peak_distance(empty, a)[0]) and np.isnan(M.peak_in_border(empty, 2)[0])
    assert np.isnan(M.peak_in_border(-peak_at(0, 0), 2)[0])


def test_the_border_share_is_the_chance_level_of_a_peak_in_the_border():
    assert M.border_share((64, 64), 8) == pytest.approx(1 - 48 * 48 / 64 ** 2)  # 0.4375
    noise = M.random_maps(20000, (12, 12), seed=0)
    assert M.peak_in_border(noise, 3).mean() == pytest.approx(M.border_share((12, 12), 3), abs=0.01)


def test_centre_and_random_maps():
    centre = M.centre_maps(2, (9, 9), 2.0)
    assert centre.shape == (2, 9, 9) and np.unravel_index(centre[0].argmax(), (9, 9)) == (4, 4)
    np.testing.assert_allclose(centre[0], centre[0].T)
    np.testing.assert_allclose(centre[0, 4, 6], np.exp(-4 / 8))  # exp(-r^2 / (2 sigma^2)), r = 2
    even = M.centre_maps(1, (8, 8), 2.0)[0]  # the centre lies between the four middle pixels
    assert len({even[3, 3], even[3, 4], even[4, 3], even[4, 4]}) == 1
    np.testing.assert_array_equal(M.random_maps(3, (4, 4), 7), M.random_maps(3, (4, 4), 7))
    assert not np.array_equal(M.random_maps(1, (4, 4), 7), M.random_maps(1, (4, 4), 8))


def test_the_bootstrap_interval_covers_the_mean_with_the_width_of_the_normal_approximation():
    values = np.random.default_rng(0).normal(3.0, 2.0, 400)
    low, high = M.bootstrap_interval(values, resamples=4000, seed=1)
    half_width = 1.96 * values.std() / np.sqrt(len(values))  # the normal approximation of the same interval
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert M.bootstrap_interval(np.full(10, 0.25)) == (0.25, 0.25)
    assert M.bootstrap_interval([1.0, np.nan, 1.0]) == (1.0, 1.0)  # NaN left out
    assert all(np.isnan(M.bootstrap_interval([np.nan])))


def test_relevance_rank_counts_the_top_k_pixels_inside_the_mask():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2, :2] = True  # K = 4
    heat = np.zeros((1, 4, 4))
    heat[0, 0, 0], heat[0, 0, 1], heat[0, 3, 3], heat[0, 3, 2] = 4.0, 3.0, 2.0, 1.0  # 2 of the top 4 inside
    assert M.relevance_rank(heat, mask)[0] == 0.5
    heat[0, 1, 0], heat[0, 1, 1] = 5.0, 6.0  # now the top 4 are all inside
    assert M.relevance_rank(heat, mask)[0] == 1.0
    assert M.relevance_rank(-heat, mask)[0] == 0.0  # the mask's pixels are the lowest: none of them ranks


def test_relevance_rank_scores_ties_by_their_expected_share_not_by_index():
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, :2, :2] = True  # 4 of 16 pixels
    assert M.relevance_rank(np.zeros((1, 4, 4)), mask)[0] == pytest.approx(4 / 16)  # all tied: chance
    assert M.relevance_rank(np.zeros((1, 4, 4)), mask[:, ::-1, ::-1])[0] == pytest.approx(4 / 16)  # wherever it is
    heat = np.zeros((1, 4, 4))
    heat[0, 0, 0] = 1.0  # one sure pixel inside; the other 3 of the K = 4 drawn from 15 tied, 3 of them inside
    assert M.relevance_rank(heat, mask)[0] == pytest.approx((1 + 3 * 3 / 15) / 4)
    # a map whose top K are exactly the mask, with its own ties inside: still 1
    assert M.relevance_rank(mask.astype(float), mask)[0] == 1.0
    assert np.isnan(M.relevance_rank(np.ones((1, 4, 4)), np.zeros((1, 4, 4), dtype=bool))[0])


def test_relevance_rank_against_random_tie_breaking():
    rng = np.random.default_rng(0)
    heat = rng.integers(0, 3, size=(1, 8, 8)).astype(float)  # many ties
    mask = rng.random((1, 8, 8)) < 0.3
    k = int(mask.sum())
    draws = []
    for seed in range(4000):  # break the ties at random, by a tiny random jitter, and count
        jitter = np.random.default_rng(seed).random(64) * 1e-3
        top = np.argsort(-(heat.ravel() + jitter))[:k]
        draws.append(mask.ravel()[top].mean())
    assert M.relevance_rank(heat, mask)[0] == pytest.approx(np.mean(draws), abs=0.01)
