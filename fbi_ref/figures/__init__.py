"""Figures of explanations (matplotlib, Agg-safe: every function returns a Figure and never shows it).

panels.py holds what every figure is made of (colour maps, colour bars, saving); explanations.py draws
attributions (panels, the comparison figure, the paper's Table 1 style); walk.py draws FBI itself (its walk
layer by layer, a k x tau sweep). Used by the command line, the lessons and the benchmark's report; it may import
methods, io and nn.

    from fbi_ref import figures
    fig = figures.comparison_figure(x, {m: fbi_ref.explain(model, x, m) for m in ("fbi", "gradcam")})
    figures.save(fig, "comparison.png")
"""
from fbi_ref.figures.explanations import (DISPLAY, FOOTNOTE, GRADIENT_IMAGE_SCALE, METHOD_LABELS, class_label,
                                          comparison_figure, explanation_figure, gradient_image, input_rgb,
                                          plot_gradient_image, plot_heatmap, plot_overlay, plot_signed, plot_support,
                                          prediction_text, probability_text, show_attribution, show_gradient_image,
                                          show_input, show_overlay, show_support)
from fbi_ref.figures.panels import (CELL, DPI, HEAT_CMAP, OVERLAY_CMAP, SIGNED_CMAP, SUPPORT_COLOR, save, show_heatmap,
                                    show_map, show_signed, symmetric_limits)
from fbi_ref.figures.walk import GALLERY_CELL, layer_gallery, strongest_channels, sweep_figure

__all__ = ["CELL", "DISPLAY", "DPI", "FOOTNOTE", "GALLERY_CELL", "GRADIENT_IMAGE_SCALE", "HEAT_CMAP", "METHOD_LABELS",
           "OVERLAY_CMAP", "SIGNED_CMAP", "SUPPORT_COLOR", "class_label", "comparison_figure",
           "explanation_figure", "gradient_image", "input_rgb", "layer_gallery", "plot_gradient_image", "plot_heatmap",
           "plot_overlay", "plot_signed", "plot_support", "prediction_text", "probability_text", "save",
           "show_attribution", "show_gradient_image", "show_heatmap", "show_input", "show_map", "show_overlay",
           "show_signed", "show_support", "strongest_channels", "sweep_figure", "symmetric_limits"]
