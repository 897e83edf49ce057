"""The network as it is trained: batch normalisation before every ReLU, folded away afterwards.

A 16-layer plain VGG trained from scratch sat at chance level here (the loss stayed at log 6, a constant
output, for 500 Adam steps; with batch normalisation after the convolutions only, still for 370 steps);
with batch normalisation before every ReLU, dense ones included, it learns within a few hundred steps.
At inference, batch normalisation is a per-channel affine map, so it folds exactly into the convolution or
dense layer before it: kernel * s and beta - mean * s, with s = gamma / sqrt(var + eps). The exported
model is a plain VGG (conv/dense + bias + ReLU), the architecture every method in fbi_ref explains.

Parameters live in a flat dict {(layer name, "kernel" | "bias" | "gamma" | "beta"): array}; a layer with a
ReLU has kernel, gamma and beta (no bias: the normalisation would remove it), the last layer kernel and bias.
"""
import dataclasses

import numba
import numpy as np

from fbi_ref.nn import conv
from fbi_ref.nn.kernels import jit
from fbi_ref.nn.network import Architecture, Conv2D, Dense, Flatten, MaxPool2D
from fbi_ref.nn.weights import fold_batch_norm

EPS = 1e-3  # Keras's BatchNormalization epsilon
MOMENTUM = 0.99  # Keras's default for the moving statistics


def normalised(layer):
    """True for the layers trained with batch normalisation: conv and dense layers followed by a ReLU."""
    return isinstance(layer, (Conv2D, Dense)) and layer.activation == "relu"


def init_params(arch):
    """Parameters from an architecture with (random) weights: BN scale 1 and shift 0 before every ReLU."""
    params, stats = {}, {}
    for layer in arch.layers:
        if not isinstance(layer, (Conv2D, Dense)):
            continue
        params[layer.name, "kernel"] = np.array(layer.kernel)
        if normalised(layer):
            o, dtype = layer.kernel.shape[-1], layer.kernel.dtype
            params[layer.name, "gamma"], params[layer.name, "beta"] = np.ones(o, dtype), np.zeros(o, dtype)
            stats[layer.name] = (np.zeros(o, dtype), np.ones(o, dtype))  # moving mean, variance
        else:
            params[layer.name, "bias"] = np.array(layer.bias)
    return params, stats


def _linear(layer, a, kernel):
    """z = W a (no bias) of a conv or dense layer."""
    if isinstance(layer, Conv2D):
        return conv.convolve(a, kernel, None, layer.strides, layer.padding, layer.name)
    return a @ kernel


def _column_sums(a, b, use_b):
    """(M, O) -> (O,) float64: the sum over rows of a (use_b False) or of a * b, by row blocks so that prange
    has no races."""
    m, o = a.shape
    blocks = min(m, 64)
    partial = np.zeros((blocks, o))  # (blocks, O)
    for k in numba.prange(blocks):
        for r in range(k * m // blocks, (k + 1) * m // blocks):
            for j in range(o):
                partial[k, j] += a[r, j] * b[r, j] if use_b else a[r, j]
    return partial.sum(axis=0)


column_sums = jit(_column_sums)


def _bn_relu_forward(z, gamma, beta, zhat, out):
    """z (M, O) -> zhat = (z - mean) / std and out = relu(gamma * zhat + beta), in place; returns (mean, var)."""
    m, o = z.shape
    mean = column_sums(z, z, False) / m  # (O,)
    for r in numba.prange(m):
        for j in range(o):
            zhat[r, j] = z[r, j] - mean[j]
    var = column_sums(zhat, zhat, True) / m  # (O,)
    std = np.sqrt(var + EPS)  # (O,)
    for r in numba.prange(m):
        for j in range(o):
            zhat[r, j] /= std[j]
            out[r, j] = max(gamma[j] * zhat[r, j] + beta[j], 0.0)
    return mean, var


def _bn_relu_backward(g, zhat, out, std, gamma, dz):
    """d loss/d out (M, O) -> d loss/d z (M, O) in place, through the ReLU and batch norm; returns (dgamma, dbeta)."""
    m, o = g.shape
    for r in numba.prange(m):
        for j in range(o):
            dz[r, j] = g[r, j] if out[r, j] > 0 else 0.0  # through the ReLU
    dbeta = column_sums(dz, dz, False)  # (O,)
    dgamma = column_sums(dz, zhat, True)  # (O,)
    for r in numba.prange(m):
        for j in range(o):
            # the batch mean and variance depend on z too: remove their share of the gradient
            dz[r, j] = gamma[j] / std[j] * (dz[r, j] - (dbeta[j] + zhat[r, j] * dgamma[j]) / m)
    return dgamma, dbeta


bn_relu_forward = jit(_bn_relu_forward)
bn_relu_backward = jit(_bn_relu_backward)


def forward(arch, params, x):
    """Training-mode forward on x (N, H, W, C), batch statistics. Returns (logits (N, K), tape for backward)."""
    tape, a = [], x
    for layer in arch.layers:
        saved = None
        if normalised(layer):
            z = _linear(layer, a, params[layer.name, "kernel"])  # (N, H, W, O) or (N, O)
            zhat, out = np.empty(z.shape, z.dtype), np.empty(z.shape, z.dtype)  # (N, H, W, O) or (N, O)
            mean, var = bn_relu_forward(_rows(z), params[layer.name, "gamma"], params[layer.name, "beta"],
                                        _rows(zhat), _rows(out))  # (O,), (O,) float64
            saved = (zhat, np.sqrt(var + EPS).astype(z.dtype), mean, var)
        elif isinstance(layer, Dense):
            out = layer.apply(a, params[layer.name, "kernel"], params[layer.name, "bias"])  # the logits
        elif isinstance(layer, (MaxPool2D, Flatten)):  # no weights: as at inference
            _, out, saved = layer.forward(a)
        else:
            raise TypeError(f"{type(layer).__name__} is not trained here")
        tape.append((layer, a, saved, out))
        a = out
    return a, tape


def backward(params, tape, g):
    """Gradients {key: array} of every parameter, from g = d loss / d logits (N, K)."""
    grads = {}
    for layer, a_in, saved, out in reversed(tape):
        first = layer is tape[0][0]  # nobody needs the gradient w.r.t. the image
        if normalised(layer):
            zhat, std = saved[0], saved[1]
            dz = np.empty(zhat.shape, zhat.dtype)  # (N, H, W, O) or (N, O)
            gamma = params[layer.name, "gamma"]
            dgamma, dbeta = bn_relu_backward(_rows(np.ascontiguousarray(g)), _rows(zhat), _rows(out), std, gamma, _rows(dz))
            grads[layer.name, "gamma"], grads[layer.name, "beta"] = dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype)
            g = _linear_backward(layer, params, grads, a_in, dz, first)
        elif isinstance(layer, Dense):
            grads[layer.name, "bias"] = g.sum(axis=0)
            g = _linear_backward(layer, params, grads, a_in, g, first)
        else:
            g = layer.adjoint(g, a_in, saved)
    return grads


def _rows(a):
    """(..., O) C-contiguous -> (M, O) view (never a copy: the kernels write into it)."""
    if not a.flags.c_contiguous:
        raise ValueError("the batch-norm kernels need C-contiguous arrays")
    return a.reshape(-1, a.shape[-1])


def _linear_backward(layer, params, grads, a_in, dz, first):
    """Store the kernel gradient of z = W a_in; return d loss / d a_in (None for the first layer)."""
    kernel = params[layer.name, "kernel"]
    if isinstance(layer, Dense):
        grads[layer.name, "kernel"] = a_in.T @ dz
        return None if first else dz @ kernel.T
    grads[layer.name, "kernel"] = conv.conv2d_kernel_adjoint(a_in, dz, kernel.shape, layer.strides, layer.padding)
    return None if first else conv.convolve_adjoint(dz, kernel, a_in.shape[1:3], layer.strides, layer.padding, layer.name)


def update_statistics(stats, tape):
    """Moving averages of each normalised layer's batch mean and variance (used when folding)."""
    for layer, _, saved, _ in tape:
        if normalised(layer):
            mean, var = stats[layer.name]
            stats[layer.name] = (MOMENTUM * mean + (1 - MOMENTUM) * saved[2], MOMENTUM * var + (1 - MOMENTUM) * saved[3])


def fold(arch, params, stats):
    """The plain VGG computing what the trained network computes at inference (BN folded into the layers)."""
    layers = []
    for layer in arch.layers:
        if normalised(layer):
            mean, var = stats[layer.name]
            gamma, beta, kernel = params[layer.name, "gamma"], params[layer.name, "beta"], params[layer.name, "kernel"]
            kernel, bias = fold_batch_norm(kernel, np.zeros_like(beta), gamma, beta, mean, var, EPS, dtype=kernel.dtype)
            layer = dataclasses.replace(layer, kernel=kernel, bias=bias)
        elif isinstance(layer, Dense):
            layer = dataclasses.replace(layer, kernel=params[layer.name, "kernel"].copy(),
                                        bias=params[layer.name, "bias"].copy())
        layers.append(layer)
    return Architecture(layers, arch.input_shape, arch.name)
