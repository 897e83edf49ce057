"""fbi_ref: a reference NumPy/numba implementation of Forward-Backward Interpretability (FBI) for CNNs.

    import fbi_ref
    model = fbi_ref.load_model("vgg16")              # or a path to any Keras .h5 / .weights.h5 / .keras file
    x = fbi_ref.load_image("cat.jpg", model)         # (1, 224, 224, 3), caffe-preprocessed like Keras
    fp = model.forward(x)                            # fp.logits, fp.probs, fp.outputs["block5_conv3"], ...
    e = fbi_ref.explain(model, x, method="fbi")      # e.attribution (1, 224, 224, 3), e.heatmap (1, 224, 224)

The package, bottom layer first (pyproject.toml's import-linter contracts enforce it):
    nn/          the network and its adjoints
    methods/     one backward walk and per-layer rules; explain()
    io/          files in and out: Keras models, images, arrays, the weights cache
    shapes/      the Shapes data set and the training of the embedded model
    evaluation/  the benchmark; reference/ reference files; figures/ matplotlib figures
    cli/         the `fbi-ref` command line
"""
from fbi_ref.errors import (ArchitectureError, DownloadError, FbiRefError, ImageError, InputError, ModelFileError,
                            UnsupportedLayerError)
from fbi_ref.io.images import deprocess_caffe, load_image, load_image_rgb, preprocess_caffe
from fbi_ref.io.zoo import load_model
from fbi_ref.methods.explain import METHODS, Explanation, explain
from fbi_ref.nn.memory import keep_freed_memory
from fbi_ref.nn.model import ForwardPass, Model
from fbi_ref.version import __version__

__all__ = ["load_model", "load_image", "load_image_rgb", "explain", "Explanation", "Model", "ForwardPass",
           "METHODS", "keep_freed_memory", "preprocess_caffe", "deprocess_caffe", "FbiRefError", "ModelFileError",
           "ArchitectureError", "UnsupportedLayerError", "ImageError", "InputError", "DownloadError", "__version__"]
