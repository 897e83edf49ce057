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
    figures/     matplotlib figures
    evaluation/  the benchmark; reference/ reference files
    cli/         the `fbi-ref` command line
"""
from fbi_ref.errors import (ArchitectureError, DownloadError, FbiRefError, ImageError, InputError, ModelFileError,
                            UnsupportedLayerError)
from fbi_ref.version import __version__

# The public API, imported on first use (fbi_ref.explain, fbi_ref.load_model, ...): numpy, numba and h5py load
# only when needed, so that the `fbi-ref` program can answer Ctrl-C with one line even while they load.
_API = {
    "load_model": "fbi_ref.io.zoo", "load_image": "fbi_ref.io.images", "load_image_rgb": "fbi_ref.io.images",
    "preprocess_caffe": "fbi_ref.io.images", "deprocess_caffe": "fbi_ref.io.images",
    "explain": "fbi_ref.methods.explain", "Explanation": "fbi_ref.methods.explain", "METHODS": "fbi_ref.methods.explain",
    "Model": "fbi_ref.nn.model", "ForwardPass": "fbi_ref.nn.model", "keep_freed_memory": "fbi_ref.nn.memory",
    "use_workqueue_threads": "fbi_ref.nn.kernels",
}


def __getattr__(name):
    """fbi_ref.NAME for the names of the public API, imported from their module the first time."""
    if name not in _API:
        raise AttributeError(f"module 'fbi_ref' has no attribute {name!r}")
    from importlib import import_module  # here, not at the top: the package's import stays short (see above)
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_API])


__all__ = ["load_model", "load_image", "load_image_rgb", "explain", "Explanation", "Model", "ForwardPass",
           "METHODS", "keep_freed_memory", "use_workqueue_threads", "preprocess_caffe", "deprocess_caffe", "FbiRefError", "ModelFileError",
           "ArchitectureError", "UnsupportedLayerError", "ImageError", "InputError", "DownloadError", "__version__"]
