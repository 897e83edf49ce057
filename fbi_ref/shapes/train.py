"""Training a VGG-type network in NumPy: the gradient walk that also records weight gradients, and Adam.

    python -m fbi_ref.shapes.train --seed 0 --out weights/      # reproduces the embedded Shapes model

The network is trained with batch normalisation before every ReLU (`trainnet`), which is then folded
into the convolutions (`batchnorm.py`): the model that ships is a plain VGG16-shaped network.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fbi_ref.io.keras_files import write_keras_weights
from fbi_ref.io.zoo import EMBEDDED_DIR
from fbi_ref.nn.activations import softmax
from fbi_ref.nn.architectures import random_weights, vgg
from fbi_ref.nn.model import Model
from fbi_ref.nn.network import Architecture
from fbi_ref.nn.preprocessing import CAFFE
from fbi_ref.shapes import batchnorm
from fbi_ref.shapes.dataset import CLASSES, generate

SHAPES_BLOCKS = (2, 2, 3, 3, 3)            # VGG16's 13 convolutions in 5 blocks
SHAPES_FILTERS = (16, 32, 64, 128, 128)    # narrower than VGG16's 64-128-256-512-512
SHAPES_FC_UNITS = 256
SHAPES_INPUT = 64


def shapes_architecture(classes=6):
    """The Shapes model's architecture: VGG16's topology and layer names, narrower, 64x64x3 input."""
    return vgg("shapes", SHAPES_BLOCKS, SHAPES_FILTERS, SHAPES_FC_UNITS, classes, SHAPES_INPUT)


def loss_and_gradients(arch, params, x, labels):
    """Mean softmax cross-entropy of a batch, its accuracy, the gradients {key: array}, and the tape."""
    logits, tape = batchnorm.forward(arch, params, x)
    probs = softmax(logits)  # (N, K)
    n = len(labels)
    loss = float(-np.log(np.maximum(probs[np.arange(n), labels], 1e-30)).mean())
    start = probs.copy()  # (N, K): d loss / d logits = (p - e_label) / n
    start[np.arange(n), labels] -= 1
    start /= n
    return loss, float((probs.argmax(1) == labels).mean()), batchnorm.backward(params, tape, start), tape


@dataclasses.dataclass
class Adam:
    """Adam (Kingma & Ba 2015) over a dict of parameter arrays, updated in place."""
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step_count: int = 0
    moments: dict = dataclasses.field(default_factory=dict)

    def step(self, params, grads, lr=None):
        """One update of every parameter that has a gradient."""
        self.step_count += 1
        lr = self.lr if lr is None else lr
        correction = np.sqrt(1 - self.beta2 ** self.step_count) / (1 - self.beta1 ** self.step_count)
        for key, grad in grads.items():
            m, v = self.moments.setdefault(key, (np.zeros_like(grad), np.zeros_like(grad)))
            m *= self.beta1
            m += (1 - self.beta1) * grad
            v *= self.beta2
            v += (1 - self.beta2) * grad * grad
            params[key] -= (lr * correction * m / (np.sqrt(v) + self.eps)).astype(params[key].dtype)


def preprocess_uint8(images):
    """(N, H, W, 3) uint8 RGB -> caffe-preprocessed float32 (N, H, W, 3)."""
    return CAFFE.forward(images.astype(np.float32))


def accuracy(model, images, labels, batch_size=256):
    """Top-1 accuracy over uint8 images (N, H, W, 3)."""
    hits = 0
    for i in range(0, len(images), batch_size):
        probs = model.predict(preprocess_uint8(images[i:i + batch_size]))
        hits += int((probs.argmax(1) == labels[i:i + batch_size]).sum())
    return hits / len(images)


def training_data(n, seed):
    """The training set: half single-object images, half with distractor clutter (uint8 images, labels)."""
    single, clutter = generate(n - n // 2, seed, "single"), generate(n // 2, seed, "distractor")
    return np.concatenate([single.images, clutter.images]), np.concatenate([single.labels, clutter.labels])


def train(seed=0, n_train=24000, epochs=6, batch_size=64, lr=2e-3, progress=True):
    """Train the Shapes model from He initialisation (with batch normalisation, folded at the end).

    Returns (model, history dict).
    """
    images, labels = training_data(n_train, seed)
    arch = shapes_architecture()
    params, stats = batchnorm.init_params(random_weights(arch, seed))
    adam, rng = Adam(lr=lr), np.random.default_rng(seed)
    history = {"step": [], "loss": [], "accuracy": []}
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    bar = tqdm(total=total, desc="training", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            loss, acc, grads, tape = loss_and_gradients(arch, params, preprocess_uint8(images[idx]), labels[idx])
            batchnorm.update_statistics(stats, tape)
            step = epoch * steps_per_epoch + s
            adam.step(params, grads, lr=lr * 0.5 * (1 + np.cos(np.pi * step / total)))  # cosine decay to zero
            history["step"].append(step)
            history["loss"].append(loss)
            history["accuracy"].append(acc)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(history['loss'][-50:]):.3f}",
                            acc=f"{np.mean(history['accuracy'][-50:]):.3f}")
            bar.update()
    bar.close()
    return Model(batchnorm.fold(arch, params, stats)), history


def plot_history(history, path):
    """Loss and accuracy per step (smoothed over 50 steps) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        values = np.asarray(history[key])
        smooth = np.convolve(values, np.ones(50) / 50, mode="valid") if len(values) >= 50 else values
        ax.plot(history["step"][:len(smooth)], smooth)
        ax.set_xlabel("step")
        ax.set_title(f"training {key} (mean of 50 steps)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    """Train the Shapes model and write shapes.h5 and shapes.json into the package (fbi_ref/io/embedded/, where
    load_model('shapes') finds them) and the training curve into weights/."""
    parser = argparse.ArgumentParser(prog="python -m fbi_ref.shapes.train", description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=24000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR, help="where shapes.h5 and shapes.json go")
    parser.add_argument("--curve", type=Path, default=Path("weights") / "shapes_training.png",
                        help="the training curve (PNG)")
    args = parser.parse_args(argv)
    started = time.time()
    model, history = train(args.seed, args.n_train, args.epochs)
    minutes = (time.time() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "shapes.h5"
    write_keras_weights(Architecture(model.layers, model.input_shape, "shapes"), weights)
    args.curve.parent.mkdir(parents=True, exist_ok=True)
    plot_history(history, args.curve)
    held_out = {kind: generate(2000, 10_000 + args.seed, kind) for kind in ("single", "distractor", "pair")}
    report = {kind: accuracy(model, b.images, b.labels) for kind, b in held_out.items()}
    manifest = {
        "file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "architecture": None, "class_names": list(CLASSES), "input_shape": list(model.input_shape),
        "preprocessing": "caffe (RGB->BGR, minus [103.939, 116.779, 123.68])",
        "training": {"seed": args.seed, "n_train": args.n_train, "epochs": args.epochs, "batch_size": 64,
                     "optimizer": "Adam lr 2e-3, cosine decay", "init": "He normal",
                     "normalisation": "batch norm before every ReLU (convs and fc1, fc2) while training, folded into those layers", "minutes": round(minutes, 1),
                     "data": "fbi_ref.shapes.generate(n - n//2, seed, 'single') + generate(n//2, seed, 'distractor')"},
        "held_out_accuracy": {k: round(v, 4) for k, v in report.items()},
        "held_out_seed": 10_000 + args.seed,
        "command": f"python -m fbi_ref.shapes.train --seed {args.seed} --n-train {args.n_train} --epochs {args.epochs}",
    }
    (args.out / "shapes.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["held_out_accuracy"]), f"in {minutes:.1f} min ->", weights)


if __name__ == "__main__":
    main()
