"""fbi_ref: a reference NumPy/numba implementation of Forward-Backward Interpretability (FBI) for CNNs.

    import fbi_ref
    model = fbi_ref.load_model("vgg16")              # or a path to any Keras .h5 / .weights.h5 / .keras file
    x = fbi_ref.load_image("cat.jpg", model)         # (1, 224, 224, 3), caffe-preprocessed like Keras
    fp = model.forward(x)                            # fp.logits, fp.probs, fp.outputs["block5_conv3"], ...
    e = fbi_ref.explain(model, x, method="fbi")      # e.attribution (1, 224, 224, 3), e.heatmap (1, 224, 224)
"""
from .errors import (ArchitectureError, DownloadError, FbiRefError, ImageError, InputError, ModelFileError,
                     UnsupportedLayerError)
from .explain import METHODS, Explanation, explain
from .images import deprocess_caffe, load_image as load_image_rgb, preprocess_caffe
from .malloc import keep_freed_memory
from .model import ForwardPass, Model
from .zoo import load_model

__version__ = "0.1.0"


def load_image(path, model, interpolation="nearest"):
    """An image file as the model's input batch of one (1, H, W, 3): Keras's load_img + preprocess_input.

    The image is converted to RGB, squashed to the model's input size (no crop; 'nearest' by default, as
    Keras's load_img), then caffe-preprocessed (RGB -> BGR, ImageNet mean subtracted).
    """
    from .images import preprocess_image
    return preprocess_image(path, model.input_shape, interpolation)


__all__ = ["load_model", "load_image", "load_image_rgb", "explain", "Explanation", "Model", "ForwardPass",
           "METHODS", "keep_freed_memory", "preprocess_caffe", "deprocess_caffe", "FbiRefError", "ModelFileError",
           "ArchitectureError", "UnsupportedLayerError", "ImageError", "InputError", "DownloadError"]
