"""The full-size check of issue 23: a VGG16 fine-tune at 224 x 224, built and exported by the real tools, read by
fbi_ref in every format, its logits and activations compared, and one FBI explanation made of its tf2onnx export.

Two steps, in two environments (TensorFlow and tf2onnx are never fbi_ref's dependencies):

    make finetune-fullsize            # both steps, in .venv-fixtures (tests/fixtures/finetunes) and .venv
    .venv-fixtures/bin/python benchmarks/finetune_fullsize.py build FOLDER     # Keras 3 + tf2onnx
    .venv/bin/python benchmarks/finetune_fullsize.py check FOLDER              # fbi_ref: writes report.md

`build` makes keras.applications.VGG16(include_top=False, weights=None) at 224 x 224 inside a Sequential (as
`model.add(base)` does) with the usual head: Flatten, Dense 256 ReLU, BatchNormalization, Dropout, Dense 4
softmax; every weight and batch-norm statistic random (He-scaled kernels). It saves `ft224.keras`, `ft224.h5`
and `ft224.tf2onnx.onnx` (model.export, then tf2onnx's SavedModel converter, opset 13), and `ft224.npz`: two
random RGB images, their caffe preprocessing (keras.applications.vgg16.preprocess_input), Keras's logits,
probabilities and the output of every pool and dense layer, and onnxruntime's probabilities.

`check` loads the three files with fbi_ref, compares the logits and every stored activation (error = max |ours -
theirs| / max |theirs|, tolerance 1e-5 as in tests/test_finetunes.py) and onnxruntime's probabilities, times one
FBI explanation (median of 3, after one warm-up), and runs `fbi-ref explain` on the tf2onnx file (the figure:
explain/image0_explain.png). It writes report.md and report.json beside the files and fails (exit 1) if any
error is over the tolerance.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-5
CLASSES = 4
SEED = 23


# --- build (the fixture venv: Keras 3, TensorFlow, tf2onnx, onnxruntime) ----------------------------------

def build(out: Path) -> None:
    """Write the model in three formats and Keras's / onnxruntime's outputs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from keras import layers
    import onnxruntime as ort

    rng = np.random.default_rng(SEED)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    model = keras.Sequential([keras.Input((224, 224, 3)), base, layers.Flatten(),
                              layers.Dense(256, activation="relu", name="fc1"), layers.BatchNormalization(name="fc1_bn"),
                              layers.Dropout(0.5), layers.Dense(CLASSES, activation="softmax", name="predictions")],
                             name="ft224")
    for v in model.weights:
        shape = tuple(v.shape)
        if "variance" in v.path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "kernel" in v.path:
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.2, shape)
        v.assign(value.astype(np.float32))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "ft224.keras")
    model.save(out / "ft224.h5")
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp + "/saved", format="tf_saved_model", verbose=False)
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", tmp + "/saved", "--opset", "13",
                        "--output", str(out / "ft224.tf2onnx.onnx")], check=True, capture_output=True)
    rgb = rng.uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    x = keras.applications.vgg16.preprocess_input(rgb.copy())
    acts, a = {}, keras.ops.convert_to_tensor(x)
    chain = [layer for layer in base.layers if not isinstance(layer, layers.InputLayer)] + model.layers[1:]
    for layer in chain:
        a = layer(a, training=False)
        if "pool" in layer.name or isinstance(layer, (layers.Dense, layers.BatchNormalization)):
            acts[f"act/{layer.name}"] = keras.ops.convert_to_numpy(a)
    head = model.layers[-1]
    activation, head.activation = head.activation, keras.activations.linear
    logits = keras.ops.convert_to_numpy(head(keras.ops.convert_to_tensor(acts["act/fc1_bn"]), training=False))
    head.activation = activation
    probs = model.predict(x, verbose=0)
    session = ort.InferenceSession(str(out / "ft224.tf2onnx.onnx"), providers=["CPUExecutionProvider"])
    ort_probs = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.savez(out / "ft224.npz", rgb=rgb, x=x, logits=logits, probs=probs, ort_probs=ort_probs, **acts)
    versions = {m: __import__(m).__version__ for m in ("keras", "tensorflow", "tf2onnx", "onnxruntime", "onnx")}
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"written to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


# --- check (fbi_ref's venv) -------------------------------------------------------------------------------

def scaled_error(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs|."""
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


def check(out: Path) -> int:
    """Compare fbi_ref with Keras and onnxruntime on the three files; time FBI; draw one explanation."""
    import fbi_ref
    from fbi_ref.io.images import preprocess
    from PIL import Image

    ref = dict(np.load(out / "ft224.npz"))
    rows, worst = [], 0.0
    for file in ("ft224.keras", "ft224.h5", "ft224.tf2onnx.onnx"):
        model = fbi_ref.load_model(out / file)
        fp = model.forward(ref["x"])
        assert np.array_equal(preprocess(ref["rgb"], model.preprocessing), ref["x"]), "caffe preprocessing"
        names = [layer.name for layer in model.layers]
        compared = {key: scaled_error(fp.outputs[key[4:]], ref[key]) for key in ref
                    if key.startswith("act/") and key[4:] in names}
        if file.endswith(".onnx"):  # other names (Keras's VGG names by position): compare the pools by order
            pools = [n for n in names if n.endswith("_pool")]
            keras_pools = [k for k in ref if k.startswith("act/block") and k.endswith("_pool")]
            compared = {f"act/{p} ~ {k}": scaled_error(fp.outputs[p], ref[k]) for p, k in zip(pools, keras_pools)}
        row = {"file": file, "layers": len(model.layers), "logits": scaled_error(fp.logits, ref["logits"]),
               "probs_vs_onnxruntime": scaled_error(fp.probs, ref["ort_probs"]),
               "activations_compared": len(compared), "worst_activation": max(compared.values()),
               "worst_at": max(compared, key=compared.get)}
        rows.append(row)
        worst = max(worst, row["logits"], row["probs_vs_onnxruntime"], row["worst_activation"])
    model = fbi_ref.load_model(out / "ft224.tf2onnx.onnx")
    x = ref["x"][:1]
    fbi_ref.explain(model, x, "fbi")  # warm-up: numba's kernels and the Winograd kernels
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        e = fbi_ref.explain(model, x, "fbi")
        seconds.append(time.perf_counter() - start)
    support = float(np.mean(np.any(e.attribution != 0, axis=-1)))
    image = out / "image0.png"
    Image.fromarray(np.round(ref["rgb"][0]).astype(np.uint8)).save(image)
    command = ["fbi-ref", "explain", str(image), "--model", str(out / "ft224.tf2onnx.onnx"), "--method",
               "fbi,guided_backprop,gradcam", "--out", str(out / "explain"), "-q"]
    subprocess.run(command, check=True)
    result = {"rows": rows, "tolerance": TOLERANCE, "fbi_seconds_median_of_3": float(np.median(seconds)),
              "fbi_seconds": seconds, "fbi_support_fraction": support, "explain_command": " ".join(command[:1] + [
                  "explain", "image0.png", "--model", "ft224.tf2onnx.onnx", "--method", "fbi,guided_backprop,gradcam"]),
              "layers": [type(layer).__name__ for layer in model.layers],
              "versions": json.loads((out / "versions.json").read_text()), "fbi_ref": fbi_ref.__version__}
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| file | layers | logits vs Keras | probs vs onnxruntime | activations compared | worst activation |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['file']} | {r['layers']} | {r['logits']:.1e} | {r['probs_vs_onnxruntime']:.1e} | "
              f"{r['activations_compared']} | {r['worst_activation']:.1e} ({r['worst_at']}) |" for r in rows]
    lines.append(f"\nFBI on one 224 x 224 image of the tf2onnx file: {np.median(seconds):.3f} s (median of 3 after "
                 f"a warm-up; {', '.join(f'{s:.3f}' for s in seconds)}), non-zero on {support:.1%} of the pixels.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if worst > TOLERANCE:
        print(f"FAILED: an error of {worst:.2e} is over the tolerance {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "check"):
        sys.exit("usage: finetune_fullsize.py build|check FOLDER")
    step, folder = sys.argv[1], Path(sys.argv[2])
    sys.exit(build(folder) if step == "build" else check(folder))
