"""The pointing game on a PASCAL VOC-style folder, as TorchRay's benchmark plays it.

    ROOT/JPEGImages/ID.jpg   ROOT/Annotations/ID.xml (size, objects with name, difficult, bndbox)
    ROOT/ImageSets/Main/test.txt (one ID a line)

    data = read_dataset("VOC2007")                        # the annotations of the split
    pairs = pointing_pairs(data, class_names)             # every (image, class present), all-difficult skipped
    result = pointing_game(model_spec, data, pairs, methods=("fbi", "centre"))

TorchRay's protocol (torchray/benchmark/pointing_game.py): for every (image, class present in it) pair the
class is explained; the map is resized to the original image (bilinear) and its maximum taken (the first in
row-major order); the pair is a hit when some pixel of the union of that class's boxes lies strictly within
TOLERANCE = 15 px of it ((dy^2 + dx^2) < 15^2, in the original image's pixels). A class whose boxes in an image
are all PASCAL-`difficult` is skipped there; the boxes of the mask include the difficult ones. The score is the
mean over classes of the per-class accuracy (hits / pairs), not the mean over pairs. The "difficult" subset
(Zhang et al. 2016) is a list of pairs read by read_subset: TorchRay's flags file (an image ID then one 0/1
flag per class, tab-separated; an image it does not list keeps all its pairs, as TorchRay does) or lines
"ID CLASS". The `centre` baseline points at the image centre (H // 2, W // 2).

Annotations are parsed with the standard library's xml.etree after refusing any DTD or entity declaration
(so no entity expansion and no external entity is possible), each file at most MAX_XML_BYTES.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from xml.parsers import expat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.errors import InputError
from fbi_ref.evaluation.metrics import bootstrap_interval
from fbi_ref.evaluation.scheduler import run_batches, worker_model
from fbi_ref.io.images import preprocess_image
from fbi_ref.io.paths import input_file, shown
from fbi_ref.methods.explain import explain
from fbi_ref.nn.geometry import resize_bilinear

TOLERANCE = 15            # pixels of the original image, TorchRay's default
MAX_XML_BYTES = 1 * 2**20  # a VOC annotation is about 1 kB
MAX_LIST_BYTES = 64 * 2**20
MAX_SIDE = 16384           # pixels: an annotation's declared image size above it is refused (masks are H x W)
_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a file-name stem: no folder, no '..'
CENTRE = "centre"


@dataclass(frozen=True)
class VocObject:
    """One annotated object: its class name, PASCAL's difficult flag and its box (1-based, inclusive)."""
    name: str
    difficult: bool
    box: tuple  # (xmin, ymin, xmax, ymax)


@dataclass(frozen=True)
class Annotation:
    """One image's annotation: its ID, file name, size (width, height) and objects."""
    image_id: str
    filename: str
    width: int
    height: int
    objects: tuple


@dataclass
class VocDataset:
    """A VOC-style folder's split: its root and the annotation of every image, in the split's order."""
    root: Path
    annotations: list

    def image_path(self, annotation):
        """The image file of an annotation (JPEGImages/<filename>, else JPEGImages/<ID>.jpg), a file of the folder
        itself (InputError for a symbolic link, which could lead out of it)."""
        images = self.root / "JPEGImages"
        named = images / Path(annotation.filename).name if annotation.filename else None
        path = named if named is not None and named.is_file() else images / f"{annotation.image_id}.jpg"
        return own_file(path, "image")


def own_file(path, what):
    """`path` itself, refused (InputError) when it is a symbolic link: a data set's files are read only from the
    data set's own folder, as shard folders are."""
    if Path(path).is_symlink():
        raise InputError(f"{shown(path)}: the {what} is a symbolic link; fbi_ref reads a data set's files only from "
                         f"its own folder")
    return Path(path)


# --- reading ---------------------------------------------------------------------------------

def parse_annotation(path):
    """An Annotations/*.xml file as an Annotation; InputError for anything that is not a plain VOC annotation."""
    path = input_file(own_file(path, "annotation"), "annotation")
    if path.stat().st_size > MAX_XML_BYTES:
        raise InputError(f"{shown(path)}: {path.stat().st_size:,} bytes, more than an annotation may take "
                         f"({MAX_XML_BYTES:,})")
    data = path.read_bytes()
    _no_declarations(path, data)
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as e:  # LookupError: an encoding Python does not know
        raise InputError(f"{shown(path)}: not valid XML ({e})") from None
    try:
        width, height = int(_text(root, "size/width")), int(_text(root, "size/height"))
        objects = tuple(_object(node) for node in root.findall("object"))
    except (ValueError, TypeError, OverflowError) as e:  # OverflowError: a coordinate of inf or 1e400
        raise InputError(f"{shown(path)}: not a VOC annotation ({e})") from None
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise InputError(f"{shown(path)}: image size {width} x {height} is not within 1..{MAX_SIDE}")
    outside = [o.box for o in objects if not (1 <= o.box[0] <= o.box[2] <= width and 1 <= o.box[1] <= o.box[3] <= height)]
    if outside:
        raise InputError(f"{shown(path)}: box {outside[0]} lies outside the {width} x {height} image "
                         "(boxes are 1-based and inclusive)")
    return Annotation(path.stem, root.findtext("filename", "").strip(), width, height, objects)


def _no_declarations(path, data):
    """Refuse a document type or entity declaration in any encoding, before the tree is built: expat reports
    it to a handler as it reads (nothing is expanded before the handler refuses)."""
    def refuse(*_):
        raise InputError(f"{shown(path)}: declares a DTD or entities, which annotations never need; refused")
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, LookupError, ValueError) as e:
        raise InputError(f"{shown(path)}: not valid XML ({e})") from None


def _text(node, path):
    """The stripped text of a required element."""
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"no <{path}>")
    return found.text.strip()


def _object(node):
    """A VocObject from an <object> element (coordinates may be written as floats: rounded)."""
    box = tuple(int(round(float(_text(node, f"bndbox/{k}")))) for k in ("xmin", "ymin", "xmax", "ymax"))
    if box[0] > box[2] or box[1] > box[3]:
        raise ValueError(f"box {box} has min > max")
    return VocObject(_text(node, "name"), node.findtext("difficult", "0").strip() == "1", box)


def read_dataset(root, split="test"):
    """The annotations of ImageSets/Main/<split>.txt of a VOC-style folder (InputError naming what is missing)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{shown(root)}: no such folder (a VOC-style folder holds JPEGImages/, Annotations/, "
                         "ImageSets/Main/)")
    ids = [line.split()[0] for line in _lines(root / "ImageSets" / "Main" / f"{split}.txt")]
    bad = [i for i in ids if not _IMAGE_ID.fullmatch(i) or ".." in i]
    if bad:
        raise InputError(f"{shown(root)}: ImageSets/Main/{split}.txt lists {bad[0]!r}, not a file-name stem "
                         "(image IDs name files inside the folder)")
    if not ids:
        raise InputError(f"{shown(root)}: ImageSets/Main/{split}.txt lists no image")
    return VocDataset(root, [parse_annotation(root / "Annotations" / f"{i}.xml") for i in ids])


def _lines(path):
    """The non-empty, non-comment lines of a bounded text file."""
    path = input_file(path, "list file")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise InputError(f"{shown(path)}: {path.stat().st_size:,} bytes, more than a list may take")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{shown(path)}: not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_subset(path, class_names):
    """A subset of (image ID, class index) pairs: a set of pairs, plus the set of image IDs the file lists.

    Lines "ID CLASS" (a name or an index), or TorchRay's flags "ID<TAB>f_0 ... f_K-1" with one 0/1 per class.
    """
    index = {name: i for i, name in enumerate(class_names)}
    pairs, listed = set(), set()
    for number, line in enumerate(_lines(path), 1):
        fields = line.split()
        listed.add(fields[0])
        if len(fields) == len(class_names) + 1 and set(fields[1:]) <= {"0", "1"}:
            pairs |= {(fields[0], k) for k, flag in enumerate(fields[1:]) if flag == "1"}
        elif len(fields) == 2 and (fields[1] in index or fields[1].isdecimal() and int(fields[1]) < len(class_names)):
            pairs.add((fields[0], index.get(fields[1], int(fields[1]) if fields[1].isdecimal() else -1)))
        else:
            raise InputError(f"{shown(path)}, line {number}: expected 'ID CLASS' or 'ID' and {len(class_names)} "
                             f"0/1 flags, got {line[:80]!r}")
    return pairs, listed


# --- the protocol ----------------------------------------------------------------------------

def pointing_pairs(data, class_names, subset=None):
    """[(annotation index, class index)]: every class present in each image, unless all its boxes are difficult
    (classes the model does not know are left out); with a subset (read_subset), only its pairs, and all the
    pairs of the images it does not list (TorchRay's rule for its flags file)."""
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for a, annotation in enumerate(data.annotations):
        present = {}
        for obj in annotation.objects:
            if obj.name in index:
                present.setdefault(index[obj.name], []).append(obj.difficult)
        for k in sorted(present):
            if all(present[k]):
                continue
            if subset is not None and annotation.image_id in subset[1] and (annotation.image_id, k) not in subset[0]:
                continue
            out.append((a, k))
    return out


def class_mask(annotation, class_name):
    """The union of a class's boxes (difficult ones included) in the original image's pixels (H, W) bool."""
    mask = np.zeros((annotation.height, annotation.width), dtype=bool)  # (H, W)
    for obj in annotation.objects:
        if obj.name == class_name:
            xmin, ymin, xmax, ymax = obj.box  # 1-based, inclusive
            mask[max(ymin - 1, 0):ymax, max(xmin - 1, 0):xmax] = True
    return mask


def peak_point(heatmap, size):
    """(row, col) of the maximum of a map (h, w) resized to the original image's size (H, W): the first in
    row-major order."""
    resized = resize_bilinear(np.asarray(heatmap, dtype=np.float64)[None], size)[0]  # (H, W)
    return np.unravel_index(int(np.argmax(resized)), resized.shape)


def centre_point(size):
    """The centre baseline's point (H // 2, W // 2)."""
    return size[0] // 2, size[1] // 2


def is_hit(mask, point, tolerance=TOLERANCE):
    """True when a pixel of `mask` (H, W) lies strictly within `tolerance` px of `point` (row, col)."""
    r, c = point
    t = int(np.ceil(tolerance))
    window = mask[max(r - t, 0):r + t + 1, max(c - t, 0):c + t + 1]  # only the pixels the disc can reach
    ys, xs = np.nonzero(window)
    dy, dx = ys + max(r - t, 0) - r, xs + max(c - t, 0) - c
    return bool(np.any(dy * dy + dx * dx < tolerance * tolerance))


def class_scores(hits, classes, num_classes):
    """Per-class accuracy (K,) (NaN for a class without pairs) and their mean over the classes with pairs."""
    hits, classes = np.asarray(hits, dtype=np.float64), np.asarray(classes)
    per_class = np.full(num_classes, np.nan)
    for k in np.unique(classes):
        per_class[k] = hits[classes == k].mean()
    present = per_class[np.isfinite(per_class)]
    return per_class, float(present.mean()) if present.size else float("nan")


def mean_class_interval(hits, classes, resamples=1000, seed=0, level=0.95):
    """Bootstrap interval of the mean per-class accuracy: the pairs of each class resampled within the class
    (stratified, so every resample has every class), `resamples` times."""
    hits, classes = np.asarray(hits, dtype=np.float64), np.asarray(classes)
    if hits.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)  # (B,)
    groups = [hits[classes == k] for k in np.unique(classes)]
    for g in groups:
        picks = rng.integers(0, g.size, size=(resamples, g.size))  # (B, n_k)
        means += g[picks].mean(axis=1)
    means /= len(groups)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summary(hits, classes, class_names, resamples=1000, seed=0):
    """{'score', 'interval', 'pairs', 'per_class': {name: {'accuracy', 'pairs', 'interval'}}} of one method."""
    per_class, score = class_scores(hits, classes, len(class_names))
    hits, classes = np.asarray(hits, dtype=np.float64), np.asarray(classes)
    return {"score": score, "interval": list(mean_class_interval(hits, classes, resamples, seed)), "pairs": int(hits.size),
            "per_class": {class_names[k]: {"accuracy": float(per_class[k]), "pairs": int((classes == k).sum()),
                                           "interval": list(bootstrap_interval(hits[classes == k], resamples, seed))}
                          for k in np.unique(classes)}}


# --- explaining the pairs --------------------------------------------------------------------

def pointing_batch(spec, x, targets, sizes, methods, options):
    """The peak (row, col) in original pixels of each method's map for a batch of pairs: {method: (B, 2)}.

    x: (B, H, W, C) the pairs' images, preprocessed; targets: (B,) the classes; sizes: [(H_i, W_i)] the
    original sizes. The model is loaded once per worker (scheduler.worker_model).
    """
    model = worker_model(spec)
    out = {}
    for method in methods:
        if method == CENTRE:
            out[method] = np.array([centre_point(s) for s in sizes], dtype=np.int64)
            continue
        maps = explain(model, x, method, target=list(targets), **options.get(method, {})).heatmap  # (B, h, w)
        out[method] = np.array([peak_point(m, s) for m, s in zip(maps, sizes)], dtype=np.int64)  # (B, 2)
    return out


def pointing_game(spec, data, pairs, methods, options=None, batch_size=16, client=None, jobs=1, threads=1,
                  progress=False):
    """Every method's hit (1/0) on every pair: {method: (P,) float}, explaining the pairs batch by batch (on
    `client`'s Dask workers, or `jobs` local processes)."""
    model = worker_model(spec)
    shape, rule = model.input_shape, model.preprocessing
    spans = [(i, min(i + batch_size, len(pairs))) for i in range(0, len(pairs), batch_size)]

    def task(a, b):
        chunk = pairs[a:b]
        x = np.concatenate([preprocess_image(data.image_path(data.annotations[i]), shape, preprocessing=rule)
                            for i, _ in chunk])
        sizes = [(data.annotations[i].height, data.annotations[i].width) for i, _ in chunk]
        return spec, x, [k for _, k in chunk], sizes, list(methods), options or {}

    points = {m: np.zeros((len(pairs), 2), dtype=np.int64) for m in methods}
    tasks = (task(a, b) for a, b in spans)
    with tqdm(total=len(pairs), desc="pointing", unit="pair", disable=None if progress else True) as bar:
        for n, result in run_batches(pointing_batch, tasks, client, jobs, threads):
            a, b = spans[n]
            for m in methods:
                points[m][a:b] = result[m]
            bar.update(b - a)
    return points



def pair_masks(data, pairs, class_names):
    """The union of each pair's class boxes (H, W) bool, per pair."""
    return [class_mask(data.annotations[a], class_names[k]) for a, k in pairs]


def hits_of(data, pairs, points, class_names, tolerance=TOLERANCE, masks=None):
    """(P,) 1.0 / 0.0: does each pair's point hit its class's boxes (`masks`: pair_masks, if already made)."""
    masks = pair_masks(data, pairs, class_names) if masks is None else masks
    return np.array([float(is_hit(mask, tuple(p), tolerance)) for mask, p in zip(masks, points)])


def evaluate_voc(spec, root, methods, class_names, subset_path=None, options=None, batch_size=16, client=None,
                 jobs=1, threads=1, resamples=1000, progress=False):
    """The pointing game of every method on a VOC-style folder: {'all': {method: summary}, 'subset': {...} or
    None, 'pairs', 'images', 'tolerance'}."""
    data = read_dataset(root)
    pairs = pointing_pairs(data, class_names)
    if not pairs:
        raise InputError(f"{shown(root)}: no (image, class) pair of the model's classes ({', '.join(class_names)})")
    subset = read_subset(subset_path, class_names) if subset_path else None
    in_subset = set(pointing_pairs(data, class_names, subset)) if subset else None  # {(image index, class)}
    points = pointing_game(spec, data, pairs, methods, options, batch_size, client, jobs, threads, progress)
    masks = pair_masks(data, pairs, class_names)  # once, for every method
    classes = np.array([k for _, k in pairs])
    result = {"all": {}, "subset": {} if subset else None, "pairs": len(pairs), "images": len(data.annotations),
              "tolerance": TOLERANCE, "subset_pairs": len(in_subset) if subset else None}
    for i, method in enumerate(methods):
        hits = hits_of(data, pairs, points[method], class_names, masks=masks)
        result["all"][method] = summary(hits, classes, class_names, resamples, seed=i)
        if subset:
            keep = np.array([pair in in_subset for pair in pairs])  # (P,)
            result["subset"][method] = summary(hits[keep], classes[keep], class_names, resamples, seed=i)
    return result


def table(result):
    """The results as a Markdown table: a row per method, the score and its 95 % interval (and the subset's)."""
    head = "| method | all (%) | 95 % interval |" + (" subset (%) | 95 % interval |" if result["subset"] else "")
    rule = "|---|---:|---|" + ("---:|---|" if result["subset"] else "")
    rows = [head, rule]
    for method, s in result["all"].items():
        row = f"| {method} | {100 * s['score']:.1f} | {100 * s['interval'][0]:.1f} - {100 * s['interval'][1]:.1f} |"
        if result["subset"]:
            t = result["subset"][method]
            row += f" {100 * t['score']:.1f} | {100 * t['interval'][0]:.1f} - {100 * t['interval'][1]:.1f} |"
        rows.append(row)
    note = (f"\n{result['pairs']} (image, class) pairs in {result['images']} images"
            + (f"; subset: {result['subset_pairs']} pairs" if result["subset"] else "")
            + f"; hit: a point within {result['tolerance']} px of the class's boxes; score: mean over classes of the "
              "per-class accuracy")
    return "\n".join(rows) + note
