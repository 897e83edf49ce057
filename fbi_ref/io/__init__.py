"""Files in and out: models (Keras, torchvision, ONNX), images, arrays (imports fbi_ref.nn, never methods or above).

    keras_files.py    the weights layouts Keras writes (.h5 of Keras 1/2/3, .weights.h5, .keras), and a writer
    keras_config.py   a Keras model config (JSON) as an Architecture
    infer.py          a VGG-shaped Architecture inferred from the weights alone
    torch_files.py    torchvision VGG state dicts (.safetensors, .pth): layouts converted, batch norm folded
    onnx_files.py     VGG-style ONNX graphs (Conv, Relu, MaxPool, Gemm, ...), untrusted files read safely
    zoo.py            load_model: models by name (vgg16, torchvision_vgg16, shapes, ...) or by path
    weights_cache.py  where known weight files live (Keras's and torch.hub's caches too), verified atomic download
    images.py         image files as model input, loaded as Keras does, preprocessed by the model's rule
    imagenet.py       the 1000 ImageNet class names, as Keras numbers them
    arrays.py         .npy/.npz files: a deterministic writer and a bounded reader that never unpickles
    paths.py          inputs must be regular files; outputs never replace an input, a symlink or a device
    locks.py          an exclusive lock on an open file, on POSIX and Windows alike
    embedded/         the embedded Shapes model (shapes.h5 + shapes.json): package data, found by zoo.py
"""
