"""Figures of FBI itself: its walk layer by layer (layer_gallery) and its results over k and tau (sweep_figure).

Same conventions as explanations.py: each returns a Figure, never shows it.
"""
from __future__ import annotations

import numpy as np

from fbi_ref.figures import explanations as F
from fbi_ref.figures.panels import CELL, clean, new_figure, show_signed, symmetric_limits

GALLERY_CELL = 1.7  # inches per panel: a VGG16 walk has two dozen rows


def strongest_channels(g, n):
    """The indices of the n channels of g (H, W, C) with the largest total |g|, strongest first."""
    totals = np.abs(g).reshape(-1, g.shape[-1]).sum(axis=0)  # (C,)
    order = np.argsort(-totals, kind="stable")  # stable: ties keep the lower channel index
    return [int(c) for c in order[:n] if totals[c] > 0] or [int(order[0])]


def layer_gallery(x, explanation, n_maps=4, index=0, class_names=None):
    """FBI's walk as pictures: per recorded position, top layer first, its support and backward signal.

    x: (N, H, W, 3) preprocessed inputs; explanation: explain(..., record_layers=True) of x; index:
    which image. Each row is a position (a layer's output, or 'input'): first its binary support (per
    pixel, the fraction of channels kept; where no mask applies, where the signal is non-zero), then the n_maps
    strongest backward maps (signed colours, limits shared within the row). Dense positions are strips.
    The last row shows the image's support, the image with it outlined, and the attribution.
    """
    if explanation.backward is None:
        raise ValueError("layer_gallery needs explain(..., record_layers=True)")
    positions = list(explanation.backward)  # recorded from the top down
    support = explanation.support or {}
    fig = new_figure((GALLERY_CELL * (n_maps + 1) + 0.8, GALLERY_CELL * len(positions) + 0.8), layout="constrained")
    grid = fig.add_gridspec(len(positions), 1)
    for row, position in enumerate(positions):
        g = explanation.backward[position][index]
        kept = support[position][index] if position in support else None
        if position == "input":
            _input_row(fig, grid[row, 0], x[index], g, kept, n_maps)
        elif g.ndim == 3:
            _map_row(fig, grid[row, 0], position, g, kept, n_maps)
        else:
            _strip_row(fig, grid[row, 0], position, g, kept)
    fig.suptitle(f"FBI walk, top layer to image: {F.prediction_text(explanation, index, class_names)}",
                 fontsize=11)
    fig.supxlabel("left: per pixel, the fraction of channels in the support (white = all, black = none); "
                  "right: the strongest backward maps (red > 0 > blue)", fontsize=7)
    return fig


def _support_title(kept, g):
    """The support panel's title: the fraction kept, or the non-zero fraction where there is no mask."""
    if kept is not None:
        return f"support {kept.mean():.1%}"
    return f"no mask; g≠0 {np.mean(g != 0):.1%}"


def _support_panel(ax, kept, g, label):
    """Per pixel, the fraction of channels in the support (white = all kept, black = none); without a mask,
    the fraction where g is non-zero. Dense positions: one strip."""
    shown = kept if kept is not None else g != 0
    plane = shown.mean(axis=-1) if shown.ndim == 3 else shown[None, :].astype(float)
    ax.imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              aspect="auto" if shown.ndim == 1 else "equal")
    clean(ax, _support_title(kept, g))
    ax.set_ylabel(label, fontsize=8)


def _map_row(fig, cell, position, g, kept, n_maps):
    """A spatial position: the support, then the strongest backward maps."""
    sub = cell.subgridspec(1, n_maps + 1)
    _support_panel(fig.add_subplot(sub[0]), kept, g, f"{position}\n{'×'.join(map(str, g.shape))}")
    channels = strongest_channels(g, n_maps)
    limits = symmetric_limits(g[..., channels])
    for j, c in enumerate(channels, start=1):
        show_signed(fig.add_subplot(sub[j]), g[..., c], f"map {c}", limits=limits)


def _strip_row(fig, cell, position, g, kept):
    """A dense position (or the logits): the support and the signal as one-row strips."""
    sub = cell.subgridspec(1, 4)
    _support_panel(fig.add_subplot(sub[0]), kept, g, f"{position}\n{g.shape[0]} units")
    ax = fig.add_subplot(sub[1:])
    show_signed(ax, g[None, :], f"backward signal ({g.shape[0]} units)", colorbar=True, aspect="auto")


def _input_row(fig, cell, x, g, kept, n_maps):
    """The image: its support, the image with the support outlined, and the attribution."""
    sub = cell.subgridspec(1, n_maps + 1)
    _support_panel(fig.add_subplot(sub[0]), kept, g, f"input\n{'×'.join(map(str, g.shape))}")
    mask = kept.any(axis=-1) if kept is not None else np.any(g != 0, axis=-1)
    F.show_support(fig.add_subplot(sub[1]), x, mask, "outline: any channel kept")
    F.show_gradient_image(fig.add_subplot(sub[2]), g, "attribution")


def sweep_figure(x, attributions, ks, taus, tau_mode="absolute", class_names=None, explanation=None):
    """FBI over a grid of k (rows) and tau (columns), the input in the top-left corner.

    x: (H, W, 3) or (1, H, W, 3) preprocessed image; attributions: {(k, tau): (H, W, 3)}; explanation:
    any one Explanation of x, for the prediction in the title. Each cell says how many pixels are non-zero.
    """
    x = np.asarray(x)
    x = x[0] if x.ndim == 4 else x
    fig = new_figure((CELL * (len(taus) + 1), CELL * len(ks) + 0.6), layout="constrained")
    axes = fig.subplots(len(ks), len(taus) + 1, squeeze=False)
    F.show_input(axes[0, 0], x, "input")
    for ax in axes[1:, 0]:
        ax.set_axis_off()
    for r, k in enumerate(ks):
        for c, tau in enumerate(taus, start=1):
            a = attributions[(k, tau)]
            F.show_gradient_image(axes[r, c], a, f"τ = {tau:g}" if r == 0 else None)
            shown = np.mean(np.any(a != 0, axis=-1))
            axes[r, c].text(0.02, 0.02, f"{shown:.{0 if shown >= 0.1 else 1}%} px", color="white", fontsize=7,
                            transform=axes[r, c].transAxes, bbox={"facecolor": "black", "alpha": 0.5, "pad": 1})
        axes[r, 1].set_ylabel(f"k = {k:g}", fontsize=9)
    title = f"FBI over k (rows) and τ (columns, {tau_mode})"
    if explanation is not None:
        title += f": {F.prediction_text(explanation, 0, class_names)}"
    fig.suptitle(title, fontsize=11)
    fig.supxlabel(F.FOOTNOTE.split(";")[0], fontsize=7)
    return fig
