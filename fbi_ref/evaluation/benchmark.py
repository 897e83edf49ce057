"""The benchmark: FBI, every baseline and two trivial controls on held-out Shapes images with exact masks.

    fbi-ref evaluate --out out/evaluate          # the command line: fbi_ref/cli/evaluate.py

Per row, on a fixed test set: the pointing game with and without its tolerance, relevance mass, the same
when explaining a class that is not in the image (the wrong-class control), class-conditional pointing and
mass share on two-object images, deletion and insertion, cascading model randomisation, where the peak
lies, sparsity and time; every mean with a bootstrap 95 % interval over images. FBI's settings are chosen
first on a separate validation set by a stated rule (selection.py). docs/benchmark.md explains it all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from itertools import takewhile

import numpy as np

from fbi_ref.errors import InputError
from fbi_ref.evaluation import metrics as M
from fbi_ref.evaluation import selection
from fbi_ref.evaluation.workers import cpu_count, cpu_time, run_tasks, thread_limit
from fbi_ref.io.zoo import load_model
from fbi_ref.methods import options as check
from fbi_ref.methods.catalog import method
from fbi_ref.methods.explain import explain
from fbi_ref.methods.fbi import DEFAULTS as FBI_DEFAULTS
from fbi_ref.methods.fbi import applicable
from fbi_ref.nn.architectures import random_weights
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Dense
from fbi_ref.shapes.dataset import CLASSES, generate
from fbi_ref.shapes.train import preprocess_uint8, shapes_architecture

TEST_SEED = 30_000            # the held-out test images (training used seed 0, train.py's accuracy check 10_000)
VALIDATION_SEED = 20_000      # the images FBI's settings and the centre baseline's sigma are chosen on
RANDOMISATION_SEED = 4_242    # the fresh weights of the cascading randomisation
SANITY_THRESHOLD = 0.5        # randomisation: rho after the dense layers are random must be below this
# The rows: FBI three ways (chosen by the rule; the paper's readings with k and tau tuned; the paper's k and
# tau), the other methods (Grad-CAM also one block lower), and two controls that look at nothing.
ROWS = ("fbi", "fbi_paper_readings", "fbi_paper", "gradient", "gradient_x_input", "deconvnet", "guided_backprop",
        "lrp_epsilon", "lrp_zplus", "gradcam", "gradcam_block4", "guided_gradcam", "integrated_gradients",
        "smoothgrad", "occlusion", "centre", "random")
CONTROLS = ("centre", "random")
COST = {"occlusion": 5, "integrated_gradients": 3, "smoothgrad": 3}  # rough relative cost: big tasks first


TAU_MODES = method("fbi").option("tau_mode").choices  # what --sweep-tau-mode may be

@dataclass
class Settings:
    """Every size, seed and option of a benchmark run (the defaults are the documented run)."""
    kind: str = "distractor"            # kind of the single-object test images (shapes.generate)
    test_seed: int = TEST_SEED
    n_test: int = 200                   # single-object test images: pointing, mass, sparsity, time
    n_wrong: int = 100                  # the first n_wrong of them, explained for a class they do not hold
    n_pairs: int = 96                   # two-object test images: class-conditional pointing (two explanations)
    n_curves: int = 64                  # the first n_curves test images: deletion / insertion
    n_random: int = 6                   # the first n_random test images: the whole randomisation cascade
    n_verdict: int = 24                 # the first n_verdict test images: rho once the dense layers are random
    verdict_draws: int = 3              # independent random weight draws of the dense layers for the verdict
    val_seed: int = VALIDATION_SEED
    n_val: int = 64                     # validation single-object images
    n_val_pairs: int = 96               # validation pair images
    steps: int = 10                     # deletion / insertion steps (each 1/steps of the pixels)
    deletion_baseline: str = "mean"     # 'mean': 0 in caffe space, the ImageNet mean colour; 'blur'
    insertion_baseline: str = "blur"    # the image insertion starts from
    blur_sigma: float = 4.0             # pixels, for the 'blur' baselines
    tolerance: float = float(M.POINTING_TOLERANCE)
    border: int = 8                     # px: a peak this close to the edge is "in the border band"
    random_seed: int = RANDOMISATION_SEED
    bootstrap: int = 1000               # bootstrap resamples of the images for every interval
    sweep: bool = True                  # choose FBI's settings on the validation set (else settings.fbi / the model's)
    sweep_k: tuple = (0.05, 0.1, 0.25, 0.5, 1.0)
    sweep_tau: tuple = (0.0, 0.01, 0.05, 0.1, 0.2)
    sweep_tau_mode: str = "relative"
    rounds: int = selection.MAX_ROUNDS  # greedy rounds of FBI's selection (0: k x tau only)
    centre_sigmas: tuple = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    fbi: dict = field(default_factory=dict)  # FBI options used without a sweep (empty: the model's defaults)
    gradcam_fine_layer: str = "block4_conv3"
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
        counts = {"n_test": (1, 100_000), "n_wrong": (1, 100_000), "n_pairs": (1, 100_000), "n_curves": (1, 100_000),
                  "n_random": (1, 10_000), "n_verdict": (1, 100_000), "verdict_draws": (1, 100), "n_val": (1, 100_000),
                  "n_val_pairs": (1, 100_000), "steps": (1, 1000), "ig_steps": (1, 10_000),
                  "smoothgrad_samples": (1, 10_000), "occlusion_patch": (1, 4096), "occlusion_stride": (1, 4096),
                  "batch_size": (1, 1024), "jobs": (1, 256), "threads": (1, 256), "border": (0, 4096),
                  "bootstrap": (10, 100_000), "rounds": (0, 100), "test_seed": (0, 2**63 - 1), "val_seed": (0, 2**63 - 1),
                  "random_seed": (0, 2**63 - 1)}
        for name, (low, high) in counts.items():
            check.count(name.replace("_", "-"), getattr(self, name), low, high)
        for name in ("blur_sigma", "tolerance"):
            check.number(name.replace("_", "-"), getattr(self, name), minimum=0.0)
        for name in ("sweep_k", "sweep_tau", "centre_sigmas"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
                raise InputError(f"{name.replace('_', '-')} must list finite numbers, got {values!r}")
        if min(self.centre_sigmas) <= 0:
            raise InputError(f"centre-sigmas must be positive, got {self.centre_sigmas!r}")
        check.choose("kind", self.kind, {"single": 0, "distractor": 0})
        check.choose("deletion-baseline", self.deletion_baseline, {"mean": 0, "blur": 0})
        check.choose("insertion-baseline", self.insertion_baseline, {"mean": 0, "blur": 0})
        check.choose("sweep-tau-mode", self.sweep_tau_mode, dict.fromkeys(TAU_MODES, 0))
        too_many = [n for n in ("n_wrong", "n_curves", "n_random", "n_verdict") if getattr(self, n) > self.n_test]
        if too_many:
            raise InputError(f"{too_many[0].replace('_', '-')} ({getattr(self, too_many[0])}) must not exceed "
                             f"n-test ({self.n_test})")

    def method_options(self, method):
        """The options of the costly methods at the benchmark's settings (others: their defaults)."""
        return {"integrated_gradients": {"steps": self.ig_steps},
                "smoothgrad": {"samples": self.smoothgrad_samples},
                "occlusion": {"patch": self.occlusion_patch, "stride": self.occlusion_stride}}.get(method, {})


# Quick sizes for development (`fbi-ref evaluate --quick`): the same run on far fewer images and a coarser grid.
QUICK = {"n_test": 48, "n_wrong": 48, "n_pairs": 32, "n_curves": 16, "n_random": 2, "n_verdict": 16, "n_val": 24,
         "n_val_pairs": 24, "sweep_k": (0.1, 0.5), "sweep_tau": (0.0, 0.05, 0.1), "bootstrap": 200}


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
    """One evaluation set: single-object images (with a class each does not hold), pair images, baselines."""
    single: Split
    pairs: Split
    wrong: np.ndarray           # (N,) a class that is not in each single-object image
    n_curves: int
    deletion_base: np.ndarray   # (n_curves, H, W, 3)
    insertion_base: np.ndarray  # (n_curves, H, W, 3)
    ends: dict                  # {'deletion', 'insertion'}: (n_curves, 2) target probabilities at both ends


def load_split(n, seed, kind, size):
    """n Shapes images of one kind, preprocessed for the model."""
    b = generate(n, seed, kind, size)
    return Split(b.images, preprocess_uint8(b.images), b.labels, b.masks, b.other_labels, b.other_masks)


def wrong_classes(labels, classes, seed):
    """For each label, another class drawn uniformly from the rest (N,): the single-object images hold one
    class object (their distractors belong to no class), so it is a class that is not in the image."""
    return (np.asarray(labels) + 1 + np.random.default_rng(seed).integers(0, classes - 1, len(labels))) % classes


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
    wrong = wrong_classes(single.labels, len(model.class_names), seed)
    x, targets = single.x[:n_curves], single.labels[:n_curves]
    deletion_base = baseline(x, settings.deletion_baseline, settings.blur_sigma)
    insertion_base = baseline(x, settings.insertion_baseline, settings.blur_sigma)
    p = {name: target_probability(model, images, targets)
         for name, images in (("x", x), ("deletion", deletion_base), ("insertion", insertion_base))}
    ends = {"deletion": np.stack([p["x"], p["deletion"]], axis=1), "insertion": np.stack([p["insertion"], p["x"]], axis=1)}
    return Data(single, pairs, wrong, len(x), deletion_base, insertion_base, ends)


def target_probability(model, x, targets, batch_size=64):
    """The probability of each image's target class (N,)."""
    if len(x) == 0:
        return np.zeros(0)
    probs = np.concatenate([model.predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return probs[np.arange(len(x)), targets]


@dataclass(frozen=True)
class Row:
    """A row of the tables: its name, the method (or control) it runs and that method's options."""
    name: str
    method: str
    options: dict


def row_maps(model, row, x, targets, settings, stream=0):
    """Heat maps (N, H, W), attribution zero shares (N,) and seconds of one row on x for targets.

    The controls ignore the image and the class: 'centre' is the same Gaussian for all, 'random' fresh noise
    (seeded by `stream`, so that each set of explanations gets its own draws).
    """
    shape = tuple(x.shape[1:3])
    if row.method == "centre":
        maps = M.centre_maps(len(x), shape, row.options["sigma"])
        return maps, M.zero_share(maps), 0.0
    if row.method == "random":
        maps = M.random_maps(len(x), shape, settings.random_seed + stream)
        return maps, M.zero_share(maps), 0.0
    maps, zeros, seconds = [], [], 0.0
    for i in range(0, len(x), settings.batch_size):
        started = time.perf_counter()
        e = explain(model, x[i:i + settings.batch_size], row.method, target=targets[i:i + settings.batch_size],
                    **row.options)
        seconds += time.perf_counter() - started
        maps.append(e.heatmap)
        zeros.append(M.zero_share(e.attribution))
    return np.concatenate(maps), np.concatenate(zeros), seconds


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


def evaluate_row(model, row, data, settings):
    """Every per-image metric of one row but randomisation: ({metric: (N,) array}, extras, heat maps: the
    single-object images' (N, H, W) and the first PAIR_EXAMPLES pair images' for each class, for the figures)."""
    single, pairs, tol = data.single, data.pairs, settings.tolerance
    if row.method not in CONTROLS:  # warm-up before the timing: numba compilation, and the first full batch's
        # allocations (+70 % on the first batch of 32 after a 1-image warm-up); 2 images for the costly methods
        warm = 2 if row.method in COST else settings.batch_size
        explain(model, single.x[:warm], row.method, target=single.labels[:warm], **row.options)
    maps, zeros, seconds = row_maps(model, row, single.x, single.labels, settings, 0)
    n = settings.n_wrong
    wrong = row_maps(model, row, single.x[:n], data.wrong[:n], settings, 1)[0]
    maps_a = row_maps(model, row, pairs.x, pairs.labels, settings, 2)[0]
    maps_b = row_maps(model, row, pairs.x, pairs.other_labels, settings, 3)[0]
    deletion = curves(model, maps, data, "deletion", settings.steps)  # (n_curves, steps + 1)
    insertion = curves(model, maps, data, "insertion", settings.steps)
    pointing, mass = M.pointing_game(maps, single.masks, tol), M.relevance_mass(maps, single.masks)
    rank = M.relevance_rank(maps, single.masks)
    wrong_pointing, wrong_mass = M.pointing_game(wrong, single.masks[:n], tol), M.relevance_mass(wrong, single.masks[:n])
    wrong_rank = M.relevance_rank(wrong, single.masks[:n])
    per_image = {
        "pointing": pointing, "pointing_exact": M.pointing_game(maps, single.masks, 0), "mass": mass, "rank": rank,
        "wrong_pointing": wrong_pointing, "wrong_mass": wrong_mass, "wrong_rank": wrong_rank,
        "pointing_drop": pointing[:n] - wrong_pointing, "mass_drop": mass[:n] - wrong_mass,
        "rank_drop": rank[:n] - wrong_rank,
        "pair_rank": (M.relevance_rank(maps_a, pairs.masks) + M.relevance_rank(maps_b, pairs.other_masks)) / 2,
        "class_pointing": M.class_pointing(maps_a, maps_b, pairs.masks, pairs.other_masks, tol),
        "class_sensitivity": M.class_sensitivity(maps_a, maps_b, pairs.masks, pairs.other_masks),
        "pair_rho": M.spearman(maps_a, maps_b),
        "deletion": M.auc(deletion), "insertion": M.auc(insertion),
        "peak_border": M.peak_in_border(maps, settings.border), "peak_distance": M.peak_distance(maps, single.masks),
        "zeros": zeros, "support_zeros": M.zero_share(maps),
    }
    extras = {"ms": 1000 * seconds / len(single.x), "deletion_curve": deletion.mean(axis=0).tolist(),
              "insertion_curve": insertion.mean(axis=0).tolist()}
    return per_image, extras, {"single": maps, "pairs": (maps_a[:PAIR_EXAMPLES], maps_b[:PAIR_EXAMPLES])}


def summarise(per_image, settings):
    """{metric: mean}, and {metric: [low, high]}: the bootstrap 95 % interval of each mean over images."""
    means = {key: mean(values) for key, values in per_image.items()}
    intervals = {key: list(M.bootstrap_interval(values, settings.bootstrap, seed=i))
                 for i, (key, values) in enumerate(per_image.items())}
    return means, intervals


def mean(values):
    """The mean over the finite values (NaN, e.g. a correlation with a constant map, is left out)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def choose_centre_sigma(data, settings):
    """The centre baseline's sigma with the highest relevance mass on the validation images (the first of
    equals), and the mass of each: (sigma, {sigma: mass})."""
    shape = tuple(data.single.x.shape[1:3])
    masses = {s: float(M.relevance_mass(M.centre_maps(len(data.single.x), shape, s), data.single.masks).mean())
              for s in settings.centre_sigmas}
    return max(masses, key=masses.get), masses


def cascade(model, seed):
    """Yield (layer name, model) with the weighted layers re-initialised cumulatively from the top down."""
    fresh = random_weights(model.architecture(), seed, model.dtype).layers
    layers = list(model.layers)
    for i in reversed([i for i, layer in enumerate(layers) if layer.weights]):
        layers[i] = fresh[i]
        yield model.layers[i].name, model.with_layers(layers)  # the model's own FBI defaults and class names


def dense_step(model):
    """The index of the cascade step after which every dense layer is random."""
    is_dense = [isinstance(layer, Dense) for layer in reversed(model.layers) if layer.weights]
    return max(len(list(takewhile(bool, is_dense))) - 1, 0)


def randomisation_row(model, row, data, maps, settings):
    """One row's randomisation: the mean Spearman of |heat map| with the original after each cascade step
    (first n_random images), and per image after the dense step (first n_verdict images) for each of
    settings.verdict_draws independent weight draws: (rho per step, [per-image rho (n_verdict,) per draw])."""
    single, step, n = data.single, dense_step(model), settings.n_verdict
    rho, draws = [], []
    for i, (_, randomised) in enumerate(cascade(model, settings.random_seed)):
        m = max(settings.n_random, n) if i == step else settings.n_random
        after = row_maps(randomised, row, single.x[:m], single.labels[:m], settings)[0]
        per_image = rank_correlation(maps[:m], after)
        rho.append(mean(per_image[:settings.n_random]))
        if i == step:
            draws.append(per_image[:n])
    for draw in range(1, settings.verdict_draws):  # other seeds: the verdict must not hang on one weight draw
        randomised = dict(enumerate(cascade(model, settings.random_seed + draw)))[step][1]
        after = row_maps(randomised, row, single.x[:n], single.labels[:n], settings)[0]
        draws.append(rank_correlation(maps[:n], after))
    return rho, draws


def rank_correlation(before, after):
    """Spearman of |heat map| before and after randomisation, per image (N,): NaN where the original map is
    constant (no ranking to keep), 0 where only the randomised one is (the ranking is entirely lost)."""
    rho = M.spearman(np.abs(before), np.abs(after))
    lost = ~constant(before) & constant(after)
    return np.where(lost, 0.0, rho)


def constant(maps):
    """Whether each map (N, H, W) is constant."""
    flat = np.abs(np.asarray(maps, dtype=np.float64)).reshape(len(maps), -1)
    return flat.max(axis=1) == flat.min(axis=1)


def sanity(rho_dense, interval):
    """'pass' when the whole interval of rho after the dense layers lies below SANITY_THRESHOLD, 'fail' when
    it lies at or above it, 'unclear' when it straddles it, 'n/a' for constant maps (rho undefined)."""
    if not np.isfinite(rho_dense):
        return "n/a"
    return "pass" if interval[1] < SANITY_THRESHOLD else "fail" if interval[0] >= SANITY_THRESHOLD else "unclear"


def verdict(draws, settings):
    """The verdict over weight draws: each draw's rho and interval (over images) and its sanity; the row's
    sanity is 'pass' or 'fail' only when every draw says so, else 'unclear' ('n/a' when rho is undefined)."""
    per_draw = []
    for d, per_image in enumerate(draws):
        interval = list(M.bootstrap_interval(per_image, settings.bootstrap, seed=7 + d))
        per_draw.append({"rho": mean(per_image), "interval": interval, "sanity": sanity(mean(per_image), interval),
                         "per_image": list(per_image)})
    said = {d["sanity"] for d in per_draw}
    overall = said.pop() if len(said) == 1 else ("n/a" if "n/a" in said else "unclear")
    stacked = np.stack(draws)  # (draws, N)
    counted = np.isfinite(stacked).sum(axis=0)  # (N,): NaN where an image's original map is constant
    pooled = np.where(counted > 0, np.nansum(stacked, axis=0) / np.maximum(counted, 1), np.nan)
    return {"rho": mean(pooled), "interval": list(M.bootstrap_interval(pooled, settings.bootstrap, seed=7)),
            "sanity": overall, "draws": per_draw, "per_image": list(pooled)}


def randomisation(model, rows, data, maps, settings):
    """The randomisation check of every row but the controls: layers, rho per step, verdict per row."""
    tested = [row for row in rows if row.method not in CONTROLS]
    tasks = [(model, row, data, maps[row.name], settings) for row in tested]
    done = run_tasks(randomisation_row, tasks, settings, "test: randomisation", [COST.get(r.method, 1) for r in tested])
    out = {"layers": [name for name, _ in cascade(model, settings.random_seed)], "dense_step": dense_step(model),
           "n": settings.n_random, "n_verdict": settings.n_verdict, "draws": settings.verdict_draws,
           "seeds": [settings.random_seed + d for d in range(settings.verdict_draws)], "rho": {}, "verdict": {}}
    for row, (rho, draws) in zip(tested, done):
        out["rho"][row.name] = rho
        out["verdict"][row.name] = verdict(draws, settings)
    return out


def fbi_rows(model, settings, selection_result):
    """The options of two FBI rows: chosen by the rule, and the paper's readings with k and tau tuned (the third,
    `fbi_paper`, is FBI's defaults: the paper's readings with its k = 50 % and tau = 10)."""
    if selection_result is not None:
        return selection_result["chosen"], selection_result["paper_readings"]
    own = {**FBI_DEFAULTS, **model.fbi_defaults, **settings.fbi}
    readings = {**FBI_DEFAULTS, **{k: own[k] for k in ("k", "tau", "tau_mode")}}
    return own, readings


def benchmark_rows(names, settings, fbi, readings, sigma):
    """A Row for each selected name."""
    def row(name):
        if name == "fbi":
            return Row(name, "fbi", dict(fbi))
        if name == "fbi_paper_readings":
            return Row(name, "fbi", dict(readings))
        if name == "fbi_paper":
            return Row(name, "fbi", dict(FBI_DEFAULTS))
        if name == "gradcam_block4":
            return Row(name, "gradcam", {"layer": settings.gradcam_fine_layer})
        if name == "centre":
            return Row(name, "centre", {"sigma": sigma})
        if name == "random":
            return Row(name, "random", {})
        return Row(name, name, settings.method_options(name))
    return [row(name) for name in names]


def fbi_vs_deconvnet(model, data, settings, maps):
    """How close FBI with k = 100 % and no threshold (tau = -inf) is to DeconvNet: mean Pearson and Spearman."""
    x, targets = data.single.x, data.single.labels
    full = {**FBI_DEFAULTS, "k": 1.0, "tau": -np.inf, "tau_mode": "absolute"}
    ours = row_maps(model, Row("full", "fbi", full), x, targets, settings)[0]
    deconv = maps.get("deconvnet")
    if deconv is None:
        deconv = row_maps(model, Row("deconvnet", "deconvnet", {}), x, targets, settings)[0]
    return {"options": {"k": 1.0, "tau": "-inf", "tau_mode": "absolute"}, "pearson": mean(M.pearson(ours, deconv)),
            "spearman": mean(M.spearman(ours, deconv))}


# Paired comparisons reported with the interval of the difference: (row, the rows it is compared with).
COMPARED = ("fbi", ("fbi_paper_readings", "guided_backprop", "guided_gradcam", "gradcam", "deconvnet", "centre"))
COMPARED_METRICS = ("pointing", "mass", "rank", "class_pointing", "pair_rank", "pointing_drop", "mass_drop",
                    "rank_drop")


def comparisons(per_image, settings):
    """{other: {metric: {'difference', 'interval'}}}: the row COMPARED[0] minus each other row, per image
    (paired: the same images), with the bootstrap 95 % interval of the mean difference."""
    first, others = COMPARED
    if first not in per_image:
        return {}
    out = {}
    for other in [o for o in others if o in per_image]:
        out[other] = {}
        for key in COMPARED_METRICS:
            d = np.asarray(per_image[first][key], dtype=np.float64) - np.asarray(per_image[other][key], dtype=np.float64)
            out[other][key] = {"difference": mean(d), "interval": list(M.bootstrap_interval(d, settings.bootstrap, 11))}
    return out


def evaluate(model, settings=None, names=ROWS):
    """Run the benchmark; returns (results dict, ready for JSON, and example heat maps for the figures).

    model: a Shapes-sized Model; settings: a Settings (default Settings()); names: the rows (ROWS).
    With settings.sweep, FBI's rows come from `selection.choose_fbi` on the validation set, whose result is
    results["selection"]; results["fbi_defaults"] is the chosen setting.
    """
    settings = settings or Settings()
    unknown = [name for name in names if name not in ROWS]
    if unknown or not names:
        raise InputError(f"unknown row {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(ROWS)}")
    with thread_limit(settings.threads):  # what this process computes too, so that nothing depends on --jobs
        return _evaluate(model, settings, list(names))


def _evaluate(model, settings, names):
    """evaluate() with the thread limit in place."""
    started, cpu_started = time.time(), cpu_time()
    clock = started
    results = {"model": model.name, "settings": settings_dict(settings), "rows": names, "stage_seconds": {}}

    def lap(stage):
        nonlocal clock
        results["stage_seconds"][stage], clock = time.time() - clock, time.time()

    val = load_data(model, settings.val_seed, settings.n_val, settings.n_val_pairs, 0, settings)
    sigma, masses = choose_centre_sigma(val, settings)
    results["centre"] = {"sigma": sigma, "validation_mass": masses}
    chosen = None
    if settings.sweep and any(name.startswith("fbi") for name in names):
        chosen = results["selection"] = selection.choose_fbi(model, val, settings)
        lap("validation")
    fbi, readings = fbi_rows(model, settings, chosen)
    results["fbi_defaults"] = applicable(model, fbi)  # the options for layers this model lacks change nothing
    rows = benchmark_rows(names, settings, fbi, readings, sigma)
    data = load_data(model, settings.test_seed, settings.n_test, settings.n_pairs, settings.n_curves, settings)
    results["accuracy"] = float((model.predict(data.single.x).argmax(1) == data.single.labels).mean())
    done = run_tasks(evaluate_row, [(model, row, data, settings) for row in rows], settings, "test: metrics",
                     [COST.get(row.method, 1) for row in rows])
    per_image = {row.name: p for row, (p, _, _) in zip(rows, done)}
    maps = {row.name: m["single"] for row, (_, _, m) in zip(rows, done)}
    results["metrics"], results["intervals"] = {}, {}
    for row, (p, extras, _) in zip(rows, done):
        means, intervals = summarise(p, settings)
        results["metrics"][row.name] = {**means, **extras, "options": row.options, "method": row.method}
        results["intervals"][row.name] = intervals
    lap("test")
    results["randomisation"] = randomisation(model, rows, data, maps, settings)
    for name, v in results["randomisation"]["verdict"].items():
        results["metrics"][name].update(rand_dense=v["rho"], rand_all=results["randomisation"]["rho"][name][-1],
                                        sanity=v["sanity"])
        results["intervals"][name]["rand_dense"] = v["interval"]
    lap("randomisation")
    results["comparisons"] = comparisons(per_image, settings)
    if "fbi" in names:
        results["fbi_vs_deconvnet"] = fbi_vs_deconvnet(model, data, settings, maps)
        lap("fbi_vs_deconvnet")
    results["per_image"] = {name: {k: list(map(float, v)) for k, v in p.items()} for name, p in per_image.items()}
    results["seconds"], results["cpu_seconds"] = time.time() - started, cpu_time() - cpu_started
    examples = {"images": data.single.images[:4], "masks": data.single.masks[:4],
                "maps": {name: m[:4] for name, m in maps.items()},
                "pairs": pair_examples(data, {row.name: m["pairs"] for row, (_, _, m) in zip(rows, done)})}
    return results, examples


PAIR_EXAMPLES = 3  # pair images in pairs.png
PAIR_EXAMPLE_ROWS = ("fbi", "fbi_paper_readings", "guided_backprop", "gradcam", "guided_gradcam")


def pair_examples(data, pair_maps):
    """The first pair images with, for a few rows, the maps explaining A's class and B's (as evaluate_row made
    them): for pairs.png."""
    p, n = data.pairs, PAIR_EXAMPLES
    maps = {name: both for name, both in pair_maps.items() if name in PAIR_EXAMPLE_ROWS}
    return {"images": p.images[:n], "masks": p.masks[:n], "other_masks": p.other_masks[:n], "maps": maps}


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


def tune_fbi_defaults(model, settings=None):
    """Choose FBI's settings for `model` on the validation set by the rule of selection.py; returns
    (chosen options, the whole selection record). The test set is never looked at."""
    settings = settings or Settings()
    with thread_limit(settings.threads):
        val = load_data(model, settings.val_seed, settings.n_val, settings.n_val_pairs, 0, settings)
        result = selection.choose_fbi(model, val, settings)
    return result["chosen"], result
