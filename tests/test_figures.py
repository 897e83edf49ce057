"""Figures: each function returns a Figure (no pyplot), draws what it says, and is reproducible."""
import io
import sys
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import fbi_ref
from fbi_ref import figures
from fbi_ref.figures import strongest_channels

METHODS = ("fbi", "guided_backprop", "gradient_x_input", "gradcam")


@pytest.fixture(scope="module")
def model(keras_fixtures):
    return fbi_ref.load_model(keras_fixtures / "small_vgg_k3.keras")


@pytest.fixture(scope="module")
def x(keras_fixtures):
    return np.load(keras_fixtures / "small_vgg_forward_reference.npz")["x"][:2]


@pytest.fixture(scope="module")
def explanations(model, x):
    return {m: fbi_ref.explain(model, x, m, **({"tau": 0.0} if m == "fbi" else {})) for m in METHODS}


def png_size(fig):
    """The (width, height) in pixels of the figure saved as PNG."""
    buffer = io.BytesIO()
    figures.save(fig, buffer)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def pyplot_figures():
    """How many figures pyplot holds (0 if pyplot was never imported): ours must never add any."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    return len(pyplot.get_fignums()) if pyplot else 0


# --- the arrays shown ------------------------------------------------------------------------

def test_gradient_image_is_centred_at_grey_with_a_tenth_per_standard_deviation():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=(16, 16, 3))
    img = figures.gradient_image(a)
    assert img.shape == (16, 16, 3) and 0 <= img.min() and img.max() <= 1
    inside = (img > 0) & (img < 1)
    assert inside.mean() > 0.99  # +-5 standard deviations fit the colour range
    assert img.mean() == pytest.approx(0.5, abs=1e-3) and img.std() == pytest.approx(0.1, rel=1e-2)


def test_gradient_image_flips_bgr_to_rgb_and_shows_zero_as_uniform_grey():
    a = np.zeros((4, 4, 3))
    a[..., 2] = 1.0  # the model's BGR: red
    img = figures.gradient_image(a)
    assert (img[..., 0] > 0.5).all() and (img[..., 2] < 0.5).all()
    np.testing.assert_array_equal(figures.gradient_image(np.zeros((4, 4, 3))), 0.5)


def test_input_rgb_undoes_the_caffe_preprocessing():
    rgb = np.random.default_rng(1).uniform(0, 255, size=(5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(figures.input_rgb(fbi_ref.preprocess_caffe(rgb)), rgb / 255, atol=1e-5)


# --- panels ----------------------------------------------------------------------------------

def test_signed_display_is_diverging_centred_at_zero_with_symmetric_limits():
    values = np.array([[-1.0, 0.5], [3.0, 0.0]])
    fig = figures.plot_signed(values, "signed")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (-3.0, 3.0) and image.get_cmap().name == figures.SIGNED_CMAP
    assert len(fig.axes) == 2  # the map and its colour bar
    assert figures.symmetric_limits(np.zeros(3)) == (-1.0, 1.0)


def test_heatmap_display_runs_from_zero_to_the_maximum():
    fig = figures.plot_heatmap(np.array([[0.0, 2.0], [1.0, 0.5]]), "heat")
    assert fig.axes[0].images[0].get_clim() == (0.0, 2.0) and len(fig.axes) == 2


@pytest.mark.parametrize("values, kind", [(np.array([[-1.0, 2.0]]), "signed"), (np.array([[0.0, 2.0]]), "≥ 0")])
def test_show_map_picks_the_encoding_by_sign_and_can_say_so_on_the_bar(values, kind):
    from fbi_ref.figures import panels
    fig = panels.new_figure((2, 2))
    ax = fig.add_subplot()
    image = panels.show_map(ax, values, colorbar=True, kind_label=True)
    assert image.get_cmap().name == (figures.SIGNED_CMAP if kind == "signed" else figures.HEAT_CMAP)
    assert fig.axes[1].get_ylabel() == kind


def test_overlay_draws_the_map_over_the_input(x):
    fig = figures.plot_overlay(x[0], np.ones((32, 32)), "overlay")
    images = fig.axes[0].images
    assert len(images) == 2 and images[1].get_alpha() == 0.5


def test_support_outline_is_a_contour_and_a_constant_mask_draws_none(x):
    mask = np.zeros((32, 32), bool)
    mask[8:20, 10:24] = True
    assert figures.plot_support(x[0], mask).axes[0].collections  # the contour
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # contour of a constant field would warn
        assert not figures.plot_support(x[0], np.zeros((32, 32), bool)).axes[0].collections


# --- whole figures ---------------------------------------------------------------------------

def test_comparison_figure_has_a_row_per_image_and_a_column_per_method(x, explanations):
    before = pyplot_figures()
    fig = figures.comparison_figure(x, explanations, row_labels=["a", "b"], title="t")
    assert isinstance(fig, Figure) and pyplot_figures() == before
    assert len(fig.axes) == len(x) * (len(METHODS) + 1)
    titles = [ax.get_title() for ax in fig.axes[: len(METHODS) + 1]]
    assert titles[0] == "input" and titles[1].startswith("FBI") and titles[-1] == "Grad-CAM"
    assert fig.axes[0].get_ylabel().startswith("a\npredicted class")
    width, height = png_size(fig)
    assert (width, height) == (round(figures.CELL * 5 * figures.DPI), round((figures.CELL * 2 + 0.6) * figures.DPI))


def test_class_names_and_probability_appear_in_the_titles(model, x, explanations):
    names = [f"shape{i}" for i in range(10)]
    fig = figures.explanation_figure(x[:1], {m: e for m, e in explanations.items()}, class_names=names,
                                     name="cat.jpg")
    top = int(explanations["fbi"].logits[0].argmax())
    p = float(model.predict(x[:1])[0, top])
    assert fig._suptitle.get_text() == f"cat.jpg: predicted shape{top} (p = {p:.2f})"


def test_explaining_another_class_says_so(model, x):
    e = fbi_ref.explain(model, x[:1], "gradient", target=9 if model.predict(x[:1])[0].argmax() != 9 else 0)
    assert "explaining class" in figures.prediction_text(e, 0)


def test_all_zero_attributions_are_labelled(model, x):
    e = {"fbi": fbi_ref.explain(model, x[:1], "fbi", tau=1e9)}
    assert figures.comparison_figure(x[:1], e).axes[1].get_title() == "FBI (all zero)"


def test_layer_gallery_has_a_row_per_recorded_position(model, x):
    e = fbi_ref.explain(model, x[:1], "fbi", tau=0.0, record_layers=True)
    fig = figures.layer_gallery(x, e, n_maps=3)
    labels = [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.get_ylabel()]
    assert labels == list(e.backward)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.startswith("support ") for t in titles) == len(e.support)
    with pytest.raises(ValueError, match="record_layers"):
        figures.layer_gallery(x, fbi_ref.explain(model, x[:1], "fbi"))


def test_strongest_channels_orders_by_total_magnitude():
    g = np.zeros((2, 2, 4))
    g[..., 1], g[..., 3], g[0, 0, 2] = -3.0, 1.0, 0.5
    assert strongest_channels(g, 3) == [1, 3, 2]
    assert strongest_channels(np.zeros((2, 2, 4)), 3) == [0]


def test_sweep_figure_is_a_grid_of_k_by_tau_plus_the_input(x):
    ks, taus = [0.25, 1.0], [-np.inf, 0.0, 10.0]
    results = {(k, t): np.full((32, 32, 3), k * (t > 0)) for k in ks for t in taus}
    fig = figures.sweep_figure(x[0], results, ks, taus)
    assert len(fig.axes) == len(ks) * (len(taus) + 1)
    assert [ax.get_title() for ax in fig.axes[1:4]] == ["τ = -inf", "τ = 0", "τ = 10"]
    assert fig.axes[1].get_ylabel() == "k = 0.25"


def test_figures_are_reproducible(x, explanations):
    first, second = io.BytesIO(), io.BytesIO()
    figures.save(figures.comparison_figure(x, explanations), first)
    figures.save(figures.comparison_figure(x, explanations), second)
    assert first.getvalue() == second.getvalue()
