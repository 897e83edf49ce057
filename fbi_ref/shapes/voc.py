"""A small PASCAL VOC-style folder drawn by the Shapes generator: boxes from the exact masks.

    write_voc("shapes-voc", n=48, seed=7)    # JPEGImages/, Annotations/, ImageSets/Main/test.txt

Image i is `generate(..., kind)` image i (half "pair": two objects of different classes, half "distractor":
one object among non-class distractors), resized to WIDTH x HEIGHT with nearest-neighbour resampling, so that
the original image's pixels are not the model's 64 x 64 and the pointing game's resizing is exercised. Each
object's box is the bounding box of its resized mask, written 1-based and inclusive as in PASCAL VOC. Every
DIFFICULT_EVERY-th image has its first object marked `difficult` (the pointing game then skips that class
there). The class names are the Shapes classes, the embedded model's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fbi_ref.shapes.dataset import CLASSES, generate

WIDTH, HEIGHT = 256, 192  # the written images' size: x 4 across, x 3 down from 64 x 64
DIFFICULT_EVERY = 5


def resized_mask(mask, size):
    """A (h, w) bool mask resized to size (H, W) by nearest neighbour, as the image is."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST)) > 127


def box_of(mask):
    """(xmin, ymin, xmax, ymax), 1-based and inclusive, of a non-empty (H, W) mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1


def annotation_xml(image_id, objects, size):
    """A VOC annotation: objects [(class name, difficult, box)], size (H, W)."""
    parts = [f"<annotation>\n  <folder>shapes-voc</folder>\n  <filename>{image_id}.jpg</filename>\n"
             f"  <size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"]
    for name, difficult, (x0, y0, x1, y1) in objects:
        parts.append(f"  <object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                     f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    return "\n".join(parts) + "\n</annotation>\n"


def write_voc(root, n=48, seed=7, size=(HEIGHT, WIDTH)):
    """Write n Shapes images as a VOC-style folder; returns {image ID: [(class, mask (H, W) at model size)]}."""
    root = Path(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    half = n // 2
    batches = [("pair", generate(half, seed, "pair")), ("distractor", generate(n - half, seed, "distractor"))]
    ids, truth = [], {}
    for kind, batch in batches:
        for i in range(len(batch)):
            image_id = f"{kind[0]}{i:05d}"
            ids.append(image_id)
            masks = [(CLASSES[batch.labels[i]], batch.masks[i])]
            if kind == "pair":
                masks.append((CLASSES[batch.other_labels[i]], batch.other_masks[i]))
            Image.fromarray(batch.images[i]).resize(size[::-1], Image.NEAREST).save(
                root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            difficult = len(ids) % DIFFICULT_EVERY == 0
            objects = [(name, difficult and j == 0, box_of(resized_mask(m, size))) for j, (name, m) in enumerate(masks)]
            (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, objects, size))
            truth[image_id] = masks
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return truth
