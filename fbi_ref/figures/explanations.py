"""Figures of explanations with matplotlib: Agg-safe, no pyplot, each function returns a Figure it never shows.

    from fbi_ref import figures
    e = {m: fbi_ref.explain(model, x, m) for m in ("fbi", "guided_backprop", "gradcam")}
    fig = figures.comparison_figure(x, e, class_names=model.class_names)
    figures.save(fig, "comparison.png")        # in a notebook, `fig` on its own line displays it

How attributions are shown (DISPLAY says which way for each method):
- 'image', the usual "guided backprop image": the (H, W, 3) attribution, its channels flipped from the
  model's BGR to RGB, centred at its mean, divided by its standard deviation, times 0.1, plus 0.5, clipped
  to [0, 1]. Mid-grey is the mean (about zero); one standard deviation is a tenth of the colour range.
- 'signed': the heat map (the method's reduction, methods/catalog.py) in a diverging colour map centred at zero, with
  symmetric limits +-max|value|: red positive, blue negative, white zero.
- 'overlay': the non-negative heat map (Grad-CAM) in 'jet' over the input, half transparent.
Inputs are shown as the RGB image (fbi_ref.deprocess_caffe); supports as outlines (a contour at 0.5).
"""
from __future__ import annotations

import numpy as np

from fbi_ref.figures.panels import (CELL, OVERLAY_CMAP, SUPPORT_COLOR, add_colorbar, clean, new_figure,
                                    show_heatmap, show_signed)
from fbi_ref.io.images import deprocess
from fbi_ref.methods.catalog import METHODS, heatmap
from fbi_ref.nn.activations import softmax
from fbi_ref.nn.preprocessing import CAFFE

METHOD_LABELS = {name: method.label for name, method in METHODS.items()}  # from the methods' records
DISPLAY = {name: method.display for name, method in METHODS.items()}
GRADIENT_IMAGE_SCALE = 0.1  # one standard deviation = a tenth of the colour range (the Keras examples' choice)
FOOTNOTE = ("gradient images: attribution (channels in RGB order) centred at its mean, / std, × 0.1, + 0.5 (grey ≈ 0); "
            "signed maps: red > 0 > blue, limits ±max|v|; Grad-CAM: jet over the input")


# --- arrays shown ----------------------------------------------------------------------------

def input_rgb(x, preprocessing=CAFFE):
    """A preprocessed image (H, W, 3) as RGB in [0, 1] for imshow, undoing the model's preprocessing (caffe:
    Keras's VGG; pass model.preprocessing for others)."""
    return deprocess(x, preprocessing or CAFFE, clip=True) / 255.0


def gradient_image(attribution, preprocessing=CAFFE):
    """An (H, W, 3) attribution w.r.t. the preprocessed input as an RGB image in [0, 1].

    The usual normalisation of guided-backprop images: channels put in RGB order (caffe's BGR flipped), subtract the mean, divide by
    the standard deviation (left as is when that is zero), multiply by GRADIENT_IMAGE_SCALE = 0.1, add
    0.5, clip to [0, 1]. An all-zero attribution becomes uniform mid-grey.
    """
    a = (preprocessing or CAFFE).to_rgb_order(np.asarray(attribution, dtype=np.float64))  # (H, W, 3) RGB
    a = a - a.mean()
    std = a.std()
    return np.clip(a / (std if std > 0 else 1.0) * GRADIENT_IMAGE_SCALE + 0.5, 0.0, 1.0)


# --- one panel -------------------------------------------------------------------------------

def show_input(ax, x, title=None, preprocessing=CAFFE):
    """Draw a preprocessed image (H, W, 3) as RGB."""
    im = ax.imshow(input_rgb(x, preprocessing), interpolation="nearest")
    clean(ax, title)
    return im


def show_gradient_image(ax, attribution, title=None, preprocessing=CAFFE):
    """Draw an (H, W, 3) attribution as a gradient image (see gradient_image)."""
    im = ax.imshow(gradient_image(attribution, preprocessing), interpolation="nearest")
    clean(ax, title)
    return im


def show_overlay(ax, x, values, title=None, colorbar=False, alpha=0.5, preprocessing=CAFFE):
    """Draw a non-negative (H, W) map over the input image, half transparent."""
    show_input(ax, x, preprocessing=preprocessing)
    top = float(np.max(values)) if np.size(values) else 0.0
    im = ax.imshow(values, cmap=OVERLAY_CMAP, alpha=alpha, vmin=0.0, vmax=top if top > 0 else 1.0,
                   interpolation="bilinear")
    clean(ax, title)
    if colorbar:
        add_colorbar(ax, im)
    return im


def show_support(ax, x, mask, title=None, color=SUPPORT_COLOR, preprocessing=CAFFE):
    """Draw the input with the outline of a binary (H, W) mask (a contour at level 0.5)."""
    im = show_input(ax, x, title, preprocessing)
    mask = np.asarray(mask, dtype=float)
    if 0 < mask.sum() < mask.size:  # a constant mask has no outline (and contour would warn)
        ax.contour(mask, levels=[0.5], colors=color, linewidths=1.2)
    return im


def show_attribution(ax, method, x, attribution, title=None, colorbar=False, preprocessing=CAFFE):
    """Draw one method's (H, W, C) attribution on input x the way DISPLAY says."""
    style = DISPLAY.get(method, "signed")
    if style == "image" and attribution.shape[-1] == 3:
        return show_gradient_image(ax, attribution, title, preprocessing)
    values = heatmap(attribution[None], METHODS[method].reduction if method in METHODS else "sum")[0]  # (H, W)
    if style == "overlay":
        return show_overlay(ax, x, values, title, colorbar, preprocessing=preprocessing)
    return show_signed(ax, values, title, colorbar)


# --- single-panel figures --------------------------------------------------------------------

def _single(draw, title):
    """A one-panel figure drawn by draw(ax)."""
    fig = new_figure((CELL * 1.6, CELL * 1.4), layout="constrained")
    ax = fig.add_subplot()
    draw(ax)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_heatmap(values, title=None):
    """A non-negative (H, W) heat map with a colour bar."""
    return _single(lambda ax: show_heatmap(ax, values, colorbar=True), title)


def plot_signed(values, title=None):
    """A signed (H, W) map, diverging colours centred at zero, symmetric limits, with a colour bar."""
    return _single(lambda ax: show_signed(ax, values, colorbar=True), title)


def plot_gradient_image(attribution, title=None):
    """An (H, W, 3) attribution as a gradient image (see gradient_image)."""
    return _single(lambda ax: show_gradient_image(ax, attribution), title)


def plot_overlay(x, values, title=None):
    """A non-negative (H, W) map over the preprocessed input x (H, W, 3), with a colour bar."""
    return _single(lambda ax: show_overlay(ax, x, values, colorbar=True), title)


def plot_support(x, mask, title=None):
    """The input x (H, W, 3) with the outline of a binary (H, W) support."""
    return _single(lambda ax: show_support(ax, x, mask), title)


# --- the comparison figure -------------------------------------------------------------------

def class_label(index, class_names=None):
    """A class's name, or 'class INDEX' when the model has no class names."""
    index = int(index)
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def prediction_text(explanation, i, class_names=None):
    """'predicted NAME (p = 0.93)', plus the explained class when it is not the prediction."""
    probs = softmax(np.asarray(explanation.logits[i:i + 1], dtype=np.float64))[0]
    top = int(probs.argmax())
    text = f"predicted {class_label(top, class_names)} (p = {probability_text(probs[top])})"
    target = int(explanation.target[i])
    if target != top:
        text += f"; explaining {class_label(target, class_names)} (p = {probability_text(probs[target])})"
    return text


def probability_text(p):
    """0.93 -> '0.93'; small ones in scientific notation so they do not read as zero: '3.2e-05'."""
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def comparison_figure(x, explanations, class_names=None, row_labels=None, title=None, colorbars=False,
                      predictions=True, preprocessing=CAFFE):
    """Rows = images, columns = the input then each method (in the dict's order).

    x: (N, H, W, 3) preprocessed inputs; explanations: {method: Explanation of x}; class_names: the
    model's, for the row labels; row_labels: an extra line per row (e.g. the true class); predictions:
    write each row's prediction beside it; colorbars: beside the signed and overlay panels; preprocessing: the
    model's (model.preprocessing), to show x as the image it was made from.
    """
    methods = list(explanations)
    first = explanations[methods[0]]
    n = len(x)
    fig = new_figure((CELL * (len(methods) + 1), CELL * n + 0.6), layout="constrained")
    axes = fig.subplots(n, len(methods) + 1, squeeze=False)
    for i in range(n):
        show_input(axes[i, 0], x[i], "input" if i == 0 else None, preprocessing)
        label = [row_labels[i]] if row_labels is not None else []
        if predictions:
            label += prediction_text(first, i, class_names).replace(" (", "\n(", 1).split("; ")
        axes[i, 0].set_ylabel("\n".join(label), fontsize=8)
        for j, method in enumerate(methods, start=1):
            attribution = explanations[method].attribution[i]
            name = METHOD_LABELS.get(method, method) if i == 0 else ""
            empty = "" if np.any(attribution) else " (all zero)"
            show_attribution(axes[i, j], method, x[i], attribution, (name + empty) or None, colorbars, preprocessing)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.supxlabel(FOOTNOTE, fontsize=7)
    return fig


def explanation_figure(x, explanations, class_names=None, name=None, preprocessing=CAFFE):
    """One image in the style of the paper's Table 1: the input, then each method, prediction in the title.

    x: (1, H, W, 3) or (H, W, 3); explanations: {method: Explanation of that one image}.
    """
    x = np.asarray(x)
    x = x[None] if x.ndim == 3 else x
    first = next(iter(explanations.values()))
    title = prediction_text(first, 0, class_names)
    if name:
        title = f"{name}: {title}"
    return comparison_figure(x[:1], explanations, class_names, title=title, colorbars=True, predictions=False,
                             preprocessing=preprocessing)

