"""Files in and out: models, images, arrays (imports fbi_ref.nn, never methods or above).

    keras_files.py    the weights layouts Keras writes (.h5 of Keras 1/2/3, .weights.h5, .keras), and a writer
    keras_config.py   a Keras model config (JSON) as an Architecture
    infer.py          a VGG-shaped Architecture inferred from the weights alone
    zoo.py            load_model: models by name (vgg16, shapes, ...) or by path
    weights_cache.py  where known weight files live, and their verified, atomic download
    images.py         image files as model input, exactly as Keras loads and preprocesses them
    imagenet.py       the 1000 ImageNet class names, as Keras numbers them
    arrays.py         .npy/.npz files: a deterministic writer and a bounded reader that never unpickles
    paths.py          inputs must be regular files; outputs never replace an input, a symlink or a device
"""
