"""The panels every figure is made of (explanations, FBI's walk, the benchmark's report): one colour map per
kind of value, one colour bar, atomic saving. Agg-safe: figures are made without pyplot, so that drawing one
never switches a notebook's backend.

    signed values   a diverging map centred at zero (SIGNED_CMAP), limits +-max|value|: red > 0 > blue
    values >= 0     a sequential map from 0 to the maximum (HEAT_CMAP)
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fbi_ref.io.paths import write_atomically

SIGNED_CMAP = "RdBu_r"
HEAT_CMAP = "inferno"
OVERLAY_CMAP = "jet"
SUPPORT_COLOR = "lime"
CELL = 2.2  # inches per panel
DPI = 100


def new_figure(figsize, **kwargs):
    """A Figure on its own Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=figsize, dpi=kwargs.pop("dpi", DPI), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def colormap(name):
    """A matplotlib colour map by name."""
    return matplotlib.colormaps[name]


def clean(ax, title=None):
    """No ticks; an optional title."""
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def symmetric_limits(values):
    """(-m, m) with m = max|values| (1 when everything is zero, so the colour bar stays readable)."""
    m = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    return (-m, m) if m > 0 else (-1.0, 1.0)


def add_colorbar(ax, image, label=None, fontsize=None):
    """The colour bar of an image drawn on ax, beside it (fontsize: of its ticks and label, for dense grids)."""
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
    if fontsize:
        bar.ax.tick_params(labelsize=fontsize)
        bar.ax.yaxis.get_offset_text().set_fontsize(fontsize)
    if label:
        bar.set_label(label, fontsize=fontsize or 7)
    return bar


def show_signed(ax, values, title=None, colorbar=False, limits=None, aspect="equal", fontsize=None, label=None):
    """Draw a 2-D map in a diverging colour map centred at zero, limits symmetric (or the given ones)."""
    lo, hi = limits or symmetric_limits(values)
    im = ax.imshow(values, cmap=SIGNED_CMAP, vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
    clean(ax, title)
    if colorbar:
        add_colorbar(ax, im, label, fontsize=fontsize)
    return im


def show_heatmap(ax, values, title=None, colorbar=False, fontsize=None, label=None):
    """Draw a non-negative 2-D map from 0 to its maximum in a sequential colour map."""
    top = float(np.max(values)) if np.size(values) else 0.0
    im = ax.imshow(values, cmap=HEAT_CMAP, vmin=0.0, vmax=top if top > 0 else 1.0, interpolation="nearest")
    clean(ax, title)
    if colorbar:
        add_colorbar(ax, im, label, fontsize=fontsize)
    return im


def show_map(ax, values, title=None, colorbar=False, fontsize=None, kind_label=False):
    """Draw a 2-D map as its kind says: signed (SIGNED_CMAP, symmetric) if it has a negative value, else
    from 0 (HEAT_CMAP); fontsize: of the colour bar's ticks; kind_label: the bar says 'signed' or '≥ 0'."""
    if np.size(values) and float(np.min(values)) < 0:
        return show_signed(ax, values, title, colorbar, fontsize=fontsize, label="signed" if kind_label else None)
    return show_heatmap(ax, values, title, colorbar, fontsize=fontsize, label="≥ 0" if kind_label else None)


def save(fig, path, dpi=DPI):
    """Write a figure to a file (PNG by the file name's suffix), atomically; returns the path.

    An existing regular file is replaced; a symlink, FIFO, device or folder at `path` is refused (InputError).
    """
    if hasattr(path, "write"):  # a file object such as io.BytesIO: matplotlib writes PNG into it
        fig.savefig(path, dpi=dpi, format="png")
        return path
    kind = Path(path).suffix.lstrip(".").lower() or "png"
    return write_atomically(path, lambda f: fig.savefig(f, dpi=dpi, format=kind))
