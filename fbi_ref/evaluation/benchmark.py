"""The benchmark: FBI and every baseline on held-out Shapes images whose objects have exact masks.

    fbi-ref evaluate --out out/evaluate          # the command line: fbi_ref/cli/evaluate.py

Per method, on a fixed test set: pointing game, relevance mass, class sensitivity on two-object images,
deletion and insertion AUC, cascading model randomisation, sparsity, time. FBI's k and tau are first chosen
by a sweep on a separate validation set (`tune_fbi_defaults`). docs/benchmark.md explains it all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from itertools import takewhile

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.evaluation import metrics as M
from fbi_ref.methods import options as check
from fbi_ref.evaluation.workers import cpu_count, cpu_time, run_tasks, thread_limit
from fbi_ref.io.zoo import PAPER_FBI_DEFAULTS, load_model
from fbi_ref.methods.explain import METHODS, explain
from fbi_ref.nn.architectures import random_weights
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Conv2D, Dense
from fbi_ref.shapes.dataset import CLASSES, generate
from fbi_ref.shapes.train import preprocess_uint8, shapes_architecture

TEST_SEED = 30_000            # the held-out test images (training used seed 0, train.py's accuracy check 10_000)
VALIDATION_SEED = 20_000      # the images the FBI sweep chooses k and tau on
RANDOMISATION_SEED = 4_242    # the fresh weights of the cascading randomisation
PAPER_FBI = PAPER_FBI_DEFAULTS  # k = 50 %, tau = 10 (absolute): the paper's values for VGG16
ROWS = ("fbi", "fbi_paper") + METHODS[1:]  # 'fbi_paper': FBI with the paper's VGG16 k and tau
SANITY_THRESHOLD = 0.5        # a method fails if rank correlation stays >= this after the dense layers are random
COST = {"occlusion": 4, "integrated_gradients": 3, "smoothgrad": 3}  # rough relative cost, to start big tasks first


@dataclass
class Settings:
    """Every size, seed and option of a benchmark run (the defaults are the documented run)."""
    kind: str = "distractor"            # kind of the single-object test images (shapes.generate)
    test_seed: int = TEST_SEED
    n_test: int = 200                   # single-object test images: pointing game, mass, sparsity, time
    n_pairs: int = 48                   # two-object test images: class sensitivity (two explanations each)
    n_curves: int = 64                  # the first n_curves test images: deletion / insertion
    n_random: int = 6                   # the first n_random test images: the randomisation cascade
    val_seed: int = VALIDATION_SEED
    n_val: int = 64
    n_val_pairs: int = 24
    n_val_curves: int = 24
    steps: int = 10                     # deletion / insertion steps (each 1/steps of the pixels)
    deletion_baseline: str = "mean"     # 'mean': 0 in caffe space, the ImageNet mean colour; 'blur'
    insertion_baseline: str = "blur"    # the image insertion starts from
    blur_sigma: float = 4.0             # pixels, for the 'blur' baselines
    tolerance: float = float(M.POINTING_TOLERANCE)
    random_seed: int = RANDOMISATION_SEED
    sweep: bool = True
    sweep_k: tuple = (0.05, 0.1, 0.25, 0.5, 1.0)
    sweep_tau: tuple = (0.0, 0.01, 0.05, 0.1, 0.2)
    sweep_tau_mode: str = "relative"
    fbi: dict = field(default_factory=dict)  # FBI options used without a sweep (empty: the model's defaults)
    ig_steps: int = 16
    smoothgrad_samples: int = 16
    occlusion_patch: int = 16
    occlusion_stride: int = 8
    batch_size: int = 32
    jobs: int = min(8, cpu_count())  # worker processes; the results do not depend on it
    threads: int = 1                 # BLAS and numba threads per task; float32 sums (last digits) depend on it
    progress: bool = True

    def __post_init__(self):
        """Every setting in its range (InputError naming it otherwise), so that a run never fails half-way."""
        counts = {"n_test": (1, 100_000), "n_pairs": (1, 100_000), "n_curves": (1, 100_000), "n_random": (1, 10_000),
                  "n_val": (1, 100_000), "n_val_pairs": (1, 100_000), "n_val_curves": (1, 100_000),
                  "steps": (1, 1000), "ig_steps": (1, 10_000), "smoothgrad_samples": (1, 10_000),
                  "occlusion_patch": (1, 4096), "occlusion_stride": (1, 4096), "batch_size": (1, 1024),
                  "jobs": (1, 256), "threads": (1, 256), "test_seed": (0, 2**63 - 1), "val_seed": (0, 2**63 - 1),
                  "random_seed": (0, 2**63 - 1)}
        for name, (low, high) in counts.items():
            check.count(name.replace("_", "-"), getattr(self, name), low, high)
        for name in ("blur_sigma", "tolerance"):
            check.number(name.replace("_", "-"), getattr(self, name), minimum=0.0)
        for name in ("sweep_k", "sweep_tau"):
            values = getattr(self, name)
            if self.sweep and (not values or not all(isinstance(v, (int, float)) for v in values)):
                raise InputError(f"{name.replace('_', '-')} must list at least one number, got {values!r}")
        check.choose("kind", self.kind, {"single": 0, "distractor": 0})
        check.choose("deletion-baseline", self.deletion_baseline, {"mean": 0, "blur": 0})
        check.choose("insertion-baseline", self.insertion_baseline, {"mean": 0, "blur": 0})
        check.choose("sweep-tau-mode", self.sweep_tau_mode, {"relative": 0, "absolute": 0})
        if self.n_curves > self.n_test or self.n_random > self.n_test:
            raise InputError(f"n-curves ({self.n_curves}) and n-random ({self.n_random}) must not exceed "
                             f"n-test ({self.n_test})")
        if self.n_val_curves > self.n_val:
            raise InputError(f"n-val-curves ({self.n_val_curves}) must not exceed n-val ({self.n_val})")

    def method_options(self, method):
        """The options of the costly methods at the benchmark's settings (others: their defaults)."""
        return {"integrated_gradients": {"steps": self.ig_steps},
                "smoothgrad": {"samples": self.smoothgrad_samples},
                "occlusion": {"patch": self.occlusion_patch, "stride": self.occlusion_stride}}.get(method, {})


@dataclass
class Split:
    """Images with their ground truth: x (N, H, W, 3) preprocessed, masks (N, H, W), the other object's too."""
    images: np.ndarray
    x: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    other_labels: np.ndarray
    other_masks: np.ndarray


@dataclass
class Data:
    """One evaluation set: single-object images, two-object images and the perturbation baselines."""
    single: Split
    pairs: Split
    n_curves: int
    deletion_base: np.ndarray   # (n_curves, H, W, 3)
    insertion_base: np.ndarray  # (n_curves, H, W, 3)
    ends: dict                  # {'deletion', 'insertion'}: (n_curves, 2) target probabilities at both ends


def load_split(n, seed, kind, size):
    """n Shapes images of one kind, preprocessed for the model."""
    b = generate(n, seed, kind, size)
    return Split(b.images, preprocess_uint8(b.images), b.labels, b.masks, b.other_labels, b.other_masks)


def baseline(x, name, sigma):
    """The image that replaces removed pixels: 'mean' (0 in caffe space) or 'blur' (a Gaussian blur of x)."""
    if name == "mean":
        return np.zeros_like(x)
    if name == "blur":
        return M.gaussian_blur(x, sigma)
    raise ValueError(f"unknown baseline {name!r}: 'mean' or 'blur'")


def load_data(model, seed, n, n_pairs, n_curves, settings):
    """The single-object and two-object sets of one seed, with their perturbation baselines."""
    size = model.input_shape[0]
    single, pairs = load_split(n, seed, settings.kind, size), load_split(n_pairs, seed, "pair", size)
    x, targets = single.x[:n_curves], single.labels[:n_curves]
    deletion_base = baseline(x, settings.deletion_baseline, settings.blur_sigma)
    insertion_base = baseline(x, settings.insertion_baseline, settings.blur_sigma)
    p = {name: target_probability(model, images, targets)
         for name, images in (("x", x), ("deletion", deletion_base), ("insertion", insertion_base))}
    ends = {"deletion": np.stack([p["x"], p["deletion"]], axis=1), "insertion": np.stack([p["insertion"], p["x"]], axis=1)}
    return Data(single, pairs, len(x), deletion_base, insertion_base, ends)


def target_probability(model, x, targets, batch_size=64):
    """The probability of each image's target class (N,)."""
    if len(x) == 0:
        return np.zeros(0)
    probs = np.concatenate([model.predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return probs[np.arange(len(x)), targets]


def explain_maps(model, x, targets, method, options, batch_size):
    """Heat maps (N, H, W), attribution zero shares (N,) and seconds spent, explaining in chunks."""
    maps, zeros, seconds = [], [], 0.0
    for i in range(0, len(x), batch_size):
        started = time.perf_counter()
        e = explain(model, x[i:i + batch_size], method, target=targets[i:i + batch_size], **options)
        seconds += time.perf_counter() - started
        maps.append(e.heatmap)
        zeros.append(M.zero_share(e.attribution))
    return np.concatenate(maps), np.concatenate(zeros), seconds


def mean(values):
    """The mean over the finite values (NaN, e.g. a correlation with a constant map, is left out)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def curves(model, maps, data, mode, steps, chunk=8):
    """Deletion or insertion curves (n_curves, steps + 1) of the test images' heat maps."""
    x, targets = data.single.x, data.single.labels
    base = data.deletion_base if mode == "deletion" else data.insertion_base
    out = []
    for i in range(0, data.n_curves, chunk):
        j = min(i + chunk, data.n_curves)
        out.append(M.perturbation_curve(model.predict, x[i:j], maps[i:j], targets[i:j], base[i:j], mode, steps,
                                        ends=data.ends[mode][i:j]))
    return np.concatenate(out) if out else np.zeros((0, steps + 1))


def evaluate_row(model, method, options, data, settings):
    """Every metric but randomisation of one method on one data set: (metrics dict, heat maps (N, H, W))."""
    single, pairs = data.single, data.pairs
    explain(model, single.x[:1], method, target=single.labels[:1], **options)  # warm-up, before the timing
    maps, zeros, seconds = explain_maps(model, single.x, single.labels, method, options, settings.batch_size)
    maps_a = explain_maps(model, pairs.x, pairs.labels, method, options, settings.batch_size)[0]
    maps_b = explain_maps(model, pairs.x, pairs.other_labels, method, options, settings.batch_size)[0]
    deletion = curves(model, maps, data, "deletion", settings.steps)  # (n_curves, steps + 1)
    insertion = curves(model, maps, data, "insertion", settings.steps)
    result = {
        "pointing": mean(M.pointing_game(maps, single.masks, settings.tolerance)),
        "mass": mean(M.relevance_mass(maps, single.masks)),
        "class_sensitivity": mean(M.class_sensitivity(maps_a, maps_b, pairs.masks, pairs.other_masks)),
        "pair_rho": mean(M.spearman(maps_a, maps_b)),
        "deletion": mean(M.auc(deletion)), "insertion": mean(M.auc(insertion)),
        "zeros": mean(zeros), "support_zeros": mean(M.zero_share(maps)),
        "ms": 1000 * seconds / len(single.x),
        "deletion_curve": deletion.mean(axis=0).tolist(), "insertion_curve": insertion.mean(axis=0).tolist(),
    }
    return result, maps


def fbi_score(m):
    """The sweep's criterion: mean of pointing, mass, class sensitivity and (1 + insertion - deletion) / 2."""
    return float(np.mean([m["pointing"], m["mass"], m["class_sensitivity"], (1 + m["insertion"] - m["deletion"]) / 2]))


def sweep_point(model, options, data, settings):
    """One row of the sweep: FBI's options, its metrics on `data` and its score."""
    m = evaluate_row(model, "fbi", options, data, settings)[0]
    return {**options, **m, "score": fbi_score(m)}


def sweep(model, data, settings):
    """FBI's metrics over the grid k x tau on `data` (the validation set); one dict per grid point."""
    grid = [{"k": k, "tau": tau, "tau_mode": settings.sweep_tau_mode} for k in settings.sweep_k for tau in settings.sweep_tau]
    return run_tasks(sweep_point, [(model, options, data, settings) for options in grid], settings,
                     "validation: FBI sweep")


def choose_fbi_defaults(sweep_rows):
    """The FBI defaults {k, tau, tau_mode} of the sweep row with the highest score (the first of equals)."""
    best = max(sweep_rows, key=lambda r: r["score"])  # max keeps the first of equal scores
    return {"k": best["k"], "tau": best["tau"], "tau_mode": best["tau_mode"]}


def validation_data(model, settings):
    """The validation set (settings.val_seed), disjoint from the test set by seed."""
    return load_data(model, settings.val_seed, settings.n_val, settings.n_val_pairs, settings.n_val_curves, settings)


def tune_fbi_defaults(model, settings=None):
    """Choose FBI's k and tau for `model` on the validation set; returns (defaults, sweep rows).

    defaults is {"k", "tau", "tau_mode"}, ready for a manifest's "fbi_defaults" (weights/shapes.json).
    The test set is never looked at. settings: a Settings (its sweep_* and val_* fields), default Settings().
    """
    settings = settings or Settings()
    with thread_limit(settings.threads):
        rows = sweep(model, validation_data(model, settings), settings)
    return choose_fbi_defaults(rows), rows


def cascade(model, seed):
    """Yield (layer name, model) with the weighted layers re-initialised cumulatively from the top down."""
    fresh = random_weights(model.architecture(), seed, model.dtype).layers
    layers = list(model.layers)
    for i in reversed([i for i, layer in enumerate(layers) if isinstance(layer, (Conv2D, Dense))]):
        layers[i] = fresh[i]
        yield model.layers[i].name, model.with_layers(layers)  # the model's own FBI defaults and class names


def randomisation_row(model, method, options, x, targets, before, settings):
    """One method's mean Spearman correlation of |heat map| with `before` after each cascade step."""
    rho = []
    for _, randomised in cascade(model, settings.random_seed):
        after = explain_maps(randomised, x, targets, method, options, settings.batch_size)[0]
        rho.append(mean(M.spearman(np.abs(before), np.abs(after))))
    return rho


def randomisation(model, rows, data, maps, settings):
    """The cascading randomisation check of every row: {layers, dense (bool per step), rho {row: list}, n}."""
    n = min(settings.n_random, len(data.single.x))
    x, targets = data.single.x[:n], data.single.labels[:n]
    tasks = [(model, method, options, x, targets, maps[name][:n], settings) for name, method, options in rows]
    rho = run_tasks(randomisation_row, tasks, settings, "test: randomisation", [COST.get(m, 1) for _, m, _ in rows])
    layers = [name for name, _ in cascade(model, settings.random_seed)]
    dense = {layer.name for layer in model.layers if isinstance(layer, Dense)}
    return {"layers": layers, "dense": [name in dense for name in layers], "n": n,
            "rho": {name: values for (name, _, _), values in zip(rows, rho)}}


def fbi_options(model, settings, chosen):
    """FBI's options for the test: the sweep's choice, else --fbi-* options, else the model's defaults."""
    own = {key: value for key, value in model.fbi_defaults.items() if key in ("k", "tau", "tau_mode")}
    return {**PAPER_FBI, **own, **settings.fbi, **(chosen or {})}


def benchmark_rows(names, settings, fbi):
    """(row name, method, options) for each selected row name."""
    def row(name):
        if name == "fbi":
            return name, "fbi", dict(fbi)
        if name == "fbi_paper":
            return name, "fbi", dict(PAPER_FBI)
        return name, name, settings.method_options(name)
    return [row(name) for name in names]


def fbi_vs_deconvnet(model, data, settings, maps):
    """How close FBI with k = 100 % and no threshold (tau = -inf) is to DeconvNet: mean Pearson and Spearman."""
    x, targets = data.single.x, data.single.labels
    full = {"k": 1.0, "tau": -np.inf, "tau_mode": "absolute"}
    ours = explain_maps(model, x, targets, "fbi", full, settings.batch_size)[0]
    deconv = maps.get("deconvnet")
    if deconv is None:
        deconv = explain_maps(model, x, targets, "deconvnet", {}, settings.batch_size)[0]
    out = {"options": {**full, "tau": "-inf"}, "pearson": mean(M.pearson(ours, deconv)),
           "spearman": mean(M.spearman(ours, deconv))}
    if "fbi" in maps:
        out["tuned_pearson"] = mean(M.pearson(maps["fbi"], deconv))
        out["tuned_spearman"] = mean(M.spearman(maps["fbi"], deconv))
    return out


def evaluate(model, settings=None, names=ROWS):
    """Run the benchmark; returns (results dict, ready for JSON, and example heat maps for the figures).

    model: a Shapes-sized Model; settings: a Settings (default Settings()); names: the rows (ROWS).
    With 'fbi' among the names and settings.sweep, FBI's k and tau come from `tune_fbi_defaults` on the
    validation set; results["fbi_defaults"] is that choice.
    """
    settings = settings or Settings()
    with thread_limit(settings.threads):  # what this process computes too, so that nothing depends on --jobs
        return _evaluate(model, settings, names)


def _evaluate(model, settings, names):
    """evaluate() with the thread limit in place."""
    started, cpu_started = time.time(), cpu_time()
    clock = started
    results = {"model": model.name, "settings": settings_dict(settings), "rows": list(names), "stage_seconds": {}}

    def lap(stage):
        nonlocal clock
        results["stage_seconds"][stage], clock = time.time() - clock, time.time()

    chosen = None
    if "fbi" in names and settings.sweep:
        chosen, results["sweep"] = tune_fbi_defaults(model, settings)
        lap("sweep")
    results["fbi_defaults"] = fbi_options(model, settings, chosen)
    rows = benchmark_rows(names, settings, results["fbi_defaults"])
    data = load_data(model, settings.test_seed, settings.n_test, settings.n_pairs, settings.n_curves, settings)
    results["accuracy"] = float((model.predict(data.single.x).argmax(1) == data.single.labels).mean())
    done = run_tasks(evaluate_row, [(model, method, options, data, settings) for _, method, options in rows],
                     settings, "test: metrics", [COST.get(method, 1) for _, method, _ in rows])
    results["metrics"] = {name: {**m, "options": options} for (name, _, options), (m, _) in zip(rows, done)}
    maps = {name: row_maps for (name, _, _), (_, row_maps) in zip(rows, done)}
    lap("test")
    results["randomisation"] = randomisation(model, rows, data, maps, settings)
    add_sanity(results)
    lap("randomisation")
    if "fbi" in names:
        results["fbi_vs_deconvnet"] = fbi_vs_deconvnet(model, data, settings, maps)
        lap("fbi_vs_deconvnet")
    results["seconds"], results["cpu_seconds"] = time.time() - started, cpu_time() - cpu_started
    examples = {"images": data.single.images[:4], "masks": data.single.masks[:4],
                "maps": {name: m[:4] for name, m in maps.items()}}
    return results, examples


def add_sanity(results):
    """Per row: rho after the dense layers and after every layer are random, and pass / fail."""
    is_dense, rho = results["randomisation"]["dense"], results["randomisation"]["rho"]
    dense = max(len(list(takewhile(bool, is_dense))) - 1, 0)  # the step that made the last dense layer random
    for name, values in rho.items():
        m = results["metrics"][name]
        m["rand_dense"], m["rand_all"] = values[dense], values[-1]
        m["sanity"] = "n/a" if np.isnan(values[dense]) else "fail" if values[dense] >= SANITY_THRESHOLD else "pass"


def settings_dict(settings):
    """The settings as plain JSON values."""
    return {f.name: list(v) if isinstance(v := getattr(settings, f.name), tuple) else v for f in fields(settings)}


def benchmark_model(name, seed=0):
    """The model to benchmark: 'random' (Shapes architecture, random weights), 'shapes' or a Keras file."""
    if name != "random":
        return load_model(name)
    check.count("model-seed", seed, 0, 2**63 - 1)
    model = Model(random_weights(shapes_architecture(len(CLASSES)), seed))
    model.name, model.class_names = f"shapes_random_seed{seed}", list(CLASSES)
    return model
