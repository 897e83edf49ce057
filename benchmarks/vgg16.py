"""Speed of FBI (and the other backprop methods) on VGG16 at 224x224, against PyTorch and the matmul floor.

    python benchmarks/vgg16.py [--repeats 5] [--batch 1 8] [--profile] [--markdown out.md]

Everything is measured in the same run, on the same machine, with the same threads, so read the ratios:
- ours: one explanation, warm (kernels compiled): forward + walk back to the image, per image;
- torch: PyTorch's forward + backward to the input of the same network (float32, default layout), per image;
- floor: numpy's matmul on the GEMM shapes of a direct (im2col) forward + adjoint pass, per image;
- peak RSS of a fresh process that loads the weights (HDF5) and explains one image;
- cold start: when a fresh `fbi-ref explain` process starts explaining, and its first explanation.
Random He-initialised weights: timing does not depend on the values.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

import fbi_ref
from fbi_ref.methods import catalog, traversal
from fbi_ref.nn.architectures import random_weights, vgg16
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Conv2D, Dense

METHODS = ("fbi", "gradient", "deconvnet", "guided_backprop")


def median_time(fn, repeats):
    """Median wall time of fn() over repeats runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gemm_shapes(model, batch):
    """(M, K, N) of every matmul a direct forward + adjoint pass does (im2col for conv, plain for dense)."""
    shapes, hw = [], model.input_shape[:2]
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            kh, kw, c, o = layer.kernel.shape
            m = batch * hw[0] * hw[1]
            shapes += [(m, kh * kw * c, o), (m, o, kh * kw * c)]
        elif isinstance(layer, Dense):
            shapes += [(batch, *layer.kernel.shape), (batch, layer.kernel.shape[1], layer.kernel.shape[0])]
        elif hasattr(layer, "pool_size"):
            hw = (hw[0] // 2, hw[1] // 2)
    return shapes


def matmul_floor(model, batch, repeats):
    """Seconds numpy's matmul needs for the GEMMs of one forward + adjoint pass (sum of medians)."""
    rng = np.random.default_rng(0)
    total = 0.0
    for m, k, n in gemm_shapes(model, batch):
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        total += median_time(lambda: np.matmul(a, b, out=out), repeats)
    return total


def torch_time(batch, repeats):
    """PyTorch forward + backward to the input of VGG16 (random weights), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    layers, c = [], 3
    for convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
        for _ in range(convs):
            layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.ReLU()]
            c = width
        layers.append(torch.nn.MaxPool2d(2))
    layers += [torch.nn.Flatten(), torch.nn.Linear(25088, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096),
               torch.nn.ReLU(), torch.nn.Linear(4096, 1000)]
    net = torch.nn.Sequential(*layers).eval()
    x = torch.randn(batch, 3, 224, 224)

    def step():
        xi = x.clone().requires_grad_(True)
        net(xi)[:, 0].sum().backward()
    return median_time(step, repeats)


def peak_rss_mib(weights, batch):
    """Peak RSS (MiB) of a fresh process that loads VGG16 from an HDF5 file and explains one batch with FBI."""
    code = ("import numpy as np, fbi_ref; fbi_ref.keep_freed_memory(); "
            f"m = fbi_ref.load_model({weights!r}); "
            f"x = np.random.default_rng(0).normal(0, 50, ({batch}, 224, 224, 3)).astype(np.float32); "
            "fbi_ref.explain(m, x, 'fbi'); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    # VmHWM, not ru_maxrss: a child's ru_maxrss keeps its parent's peak from before exec (this one's is ~3 GB)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def weights_file(model, folder):
    """VGG16's weights (random, official Keras layout, 528 MiB) written once into `folder`; returns the path."""
    from fbi_ref.io.keras_files import write_keras_weights
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vgg16_random.h5")
    if not os.path.exists(path):  # written under another name first: an interrupted write leaves no file
        write_keras_weights(model.architecture(), path + ".part")
        os.replace(path + ".part", path)
    return path


def cold_start(weights, folder):
    """`fbi-ref explain --timings` on one 224x224 image with VGG16 weights from an HDF5 file, in a fresh process.

    Returns (seconds from process start until explaining starts, seconds of that first explanation).
    """
    from PIL import Image
    image = os.path.join(folder, "noise.png")
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image)
    command = [sys.executable, "-m", "fbi_ref.cli", "explain", image, "--model", weights, "--method", "fbi",
               "--out", folder, "--timings", "-q"]
    err = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    words = err.split("explaining started ")[1].split()
    return float(words[0]), float(words[words.index("took") + 1])


def profile(model, x):
    """Seconds per layer: forward, and FBI's backward step (wrapping each rule and hook of the walk in a timer)."""
    rows = {}

    def timed(fn, key):
        def wrapper(*args):
            start = time.perf_counter()
            result = fn(*args)
            rows[key] = rows.get(key, 0.0) + time.perf_counter() - start
            return result
        return wrapper
    a = model.check_input(x)
    for layer in model.layers:
        start = time.perf_counter()
        a = layer.forward(a)[1]
        rows[f"forward {type(layer).__name__}"] = rows.get(f"forward {type(layer).__name__}", 0.0) + time.perf_counter() - start
    fp = model.forward(x)
    start_fn, rules, _ = catalog.walk_rules(model, "fbi", {})
    label = {"mask": "fbi mask", "topk": "fbi top-k"}
    hooks = {position: tuple(timed(hook, label[hook.kind]) for hook in decisions)
             for position, decisions in rules.hooks.items()}
    rules = traversal.Rules(relu=timed(rules.relu, "fbi relu rule"), linear=timed(rules.linear, "fbi conv/dense adjoint"),
                            pool=timed(rules.pool, "fbi min-replicate unpool"), hooks=hooks)
    traversal.walk(model, fp, start_fn(fp.logits, fp.probs, fp.probs.argmax(1)), rules)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--profile", action="store_true", help="also print where FBI's time goes, by layer type")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--scratch", default="out/bench", help="folder for the cold-start weights file and image")
    args = parser.parse_args()
    fbi_ref.keep_freed_memory()  # as the command line does (fbi_ref/nn/memory.py)
    fbi_ref.use_workqueue_threads()  # likewise (fbi_ref/nn/kernels.py)
    model = Model(random_weights(vgg16(), 0))
    lines = ["| batch | method | ours s/img | torch fwd+bwd s/img | matmul floor s/img | ours/torch | ours/floor |",
             "|---|---|---|---|---|---|---|"]
    results = {}
    for batch in args.batch:
        x = np.random.default_rng(0).normal(0, 50, (batch, 224, 224, 3)).astype(np.float32)
        floor = matmul_floor(model, batch, args.repeats) / batch
        torch_s = torch_time(batch, args.repeats)
        torch_s = None if torch_s is None else torch_s / batch
        times = {method: [] for method in METHODS}
        for method in METHODS:  # warm-up
            fbi_ref.explain(model, x, method)
        for _ in range(args.repeats):  # round robin, so that a noisy stretch hits every method alike
            for method in METHODS:
                start = time.perf_counter()
                fbi_ref.explain(model, x, method)
                times[method].append(time.perf_counter() - start)
        for method in METHODS:
            ours = float(np.median(times[method])) / batch
            results[batch, method] = ours
            ratio = "n/a" if torch_s is None else f"{ours / torch_s:.2f}"
            lines.append(f"| {batch} | {method} | {ours:.3f} | {torch_s if torch_s is None else f'{torch_s:.3f}'} "
                         f"| {floor:.3f} | {ratio} | {ours / floor:.2f} |")
            print(lines[-1], flush=True)
    weights = weights_file(model, args.scratch)
    rss = peak_rss_mib(weights, 1)
    lines += ["", f"peak RSS of one FBI explanation (batch 1, fresh process, weights loaded from HDF5, included): "
                  f"{rss:.0f} MiB"]
    started, first = cold_start(weights, args.scratch)
    lines += [f"cold start (`fbi-ref explain --timings`, numba cache warm, weights from a 528 MiB HDF5 file): "
              f"explaining started {started:.2f} s after process start; the first explanation took {first:.2f} s "
              f"(warm: {results.get((1, 'fbi'), float('nan')):.2f} s)"]
    if args.profile:
        x = np.random.default_rng(0).normal(0, 50, (1, 224, 224, 3)).astype(np.float32)
        profile(model, x)  # warm-up: the timed run below must not include compiling or first-touch faults
        rows = profile(model, x)
        lines += ["", "| where FBI's time goes (batch 1) | ms |", "|---|---|"]
        lines += [f"| {key} | {1e3 * value:.1f} |" for key, value in sorted(rows.items(), key=lambda kv: -kv[1])]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
