"""The Shapes data set (exact ground-truth masks) and the NumPy training of the embedded model.

May import fbi_ref.nn and fbi_ref.io (to write the trained weights); never methods or above.

    dataset.py    generate(n, seed, kind): the images, labels and masks (re-exported here)
    draw.py       signed distances, textures, backgrounds: how each image is painted
    batchnorm.py  the network as it is trained, with batch normalisation folded away afterwards
    train.py      python -m fbi_ref.shapes.train: Adam over the gradient walk; writes fbi_ref/io/embedded/shapes.h5
    voc.py        write_voc: a small PASCAL VOC-style folder of Shapes images, boxes from the masks
"""
from fbi_ref.shapes.dataset import CLASSES, DISTRACTORS, KINDS, MIN_SIZE, ShapesBatch, generate

__all__ = ["CLASSES", "DISTRACTORS", "KINDS", "MIN_SIZE", "ShapesBatch", "generate"]
