"""The per-layer rules the methods are made of, and the start signals at the logits.

Each rule is a small function with the signature `traversal.Rules` documents; a method is a start signal
plus a `Rules` table (see `tables.py` and `fbi.py`). Arrays: g is the backward signal, a_in / a_out the forward input /
output of the layer, both NHWC (or (N, F) for dense layers).
"""
import math

import numpy as np

from fbi_ref.errors import InputError, UnsupportedLayerError
from fbi_ref.nn.activations import relu_adjoint, softmax_adjoint
from fbi_ref.nn.network import Affine, Conv2D, Dense
from fbi_ref.nn.pooling import pick_switches


# ---------------------------------------------------------------- start signals at the logits (N, K)


def one_hot(logits, target):
    """(N, K) with 1 at each image's target class."""
    e = np.zeros_like(logits)  # (N, K)
    e[np.arange(len(target)), target] = 1
    return e


def start_onehot(logits, probs, target):
    """e_c: the derivative of the target logit."""
    return one_hot(logits, target)


def start_maxmin(logits, probs, target):
    """FBI's 'adjoint of the softmax': max(z) at the target class, min(z) everywhere else."""
    hot = one_hot(logits, target).astype(bool)
    zmax, zmin = logits.max(axis=1, keepdims=True), logits.min(axis=1, keepdims=True)  # (N, 1)
    return np.where(hot, zmax, zmin)  # (N, K)


def start_logits(logits, probs, target):
    """The logits themselves."""
    return logits.copy()


def contrast(probs, target):
    """e_c - p (N, K), the target's entry 1 - p_c summed from the other classes' probabilities: computed as
    1 - p_c it cancels (float32 keeps ~7 digits of p_c = 0.99999, so 1 - p_c has ~2)."""
    e = one_hot(probs, target).astype(bool)  # (N, K)
    g = -np.asarray(probs).copy()  # (N, K)
    g[e] = np.where(e, 0, probs).sum(axis=1)  # one target per row, in row order
    return g


def start_probability(logits, probs, target):
    """d p_c / d z = J^T e_c, the softmax's adjoint (Jacobian transpose) applied to e_c; equals p_c (e_c - p)."""
    return softmax_adjoint(one_hot(logits, target), probs)


def start_log_probability(logits, probs, target):
    """d log p_c / d z = J^T (e_c / p_c) = e_c - p, written out so that an underflowed p_c cannot divide by 0."""
    return contrast(probs, target)


def start_relevance(logits, probs, target):
    """LRP: all relevance on the target logit, R = z_c e_c."""
    return one_hot(logits, target) * logits


# ---------------------------------------------------------------- ReLU rules: g w.r.t. output -> pre-activation

def relu_gradient(g, a_out):
    """Chain rule: the ReLU's adjoint, i.e. pass where the forward ReLU was active."""
    return relu_adjoint(g, a_out)


def relu_deconvnet(g, a_out):
    """DeconvNet (and FBI, 'the adjoint of ReLU is ReLU itself'): ReLU of the backward signal."""
    return np.maximum(g, 0)


def relu_guided(g, a_out):
    """Guided backprop: pass where both the forward activation and the backward signal are positive."""
    return relu_adjoint(relu_deconvnet(g, a_out), a_out)


def relu_pass(g, a_out):
    """LRP: relevance goes through the activation unchanged."""
    return g


# ---------------------------------------------------------------- linear layers: g w.r.t. pre-activation -> input

def linear_adjoint(g, layer, a_in, at_image):
    """The transposed linear map, no bias (gradient, DeconvNet, guided backprop)."""
    return layer.adjoint(g, a_in)


def bias_subtracted(g, b):
    """g - b on every unit: the paper's (z - b)."""
    return g - b


def bias_ignored(g, b):
    """g: no bias, as DeconvNet."""
    return g


def bias_subtracted_on_support(g, b):
    """g - b only where g is non-zero, so that the bias cannot revive units the masks have zeroed."""
    return g - b * (g != 0)


BIAS_RULES = {"subtract": bias_subtracted, "ignore": bias_ignored, "subtract-support": bias_subtracted_on_support}


def linear_fbi(dense_bias="subtract", conv_bias="ignore", affine_bias="subtract"):
    """FBI's layer adjoint: W^T (g - b) where the bias is subtracted, W^T g where it is ignored."""
    bias_rule = {Conv2D: BIAS_RULES[conv_bias], Dense: BIAS_RULES[dense_bias], Affine: BIAS_RULES[affine_bias]}

    def rule(g, layer, a_in, at_image):
        kind = next((t for t in bias_rule if isinstance(layer, t)), None)
        if kind is None:
            raise UnsupportedLayerError(f"layer {layer.name!r}: FBI has no bias rule for {type(layer).__name__}")
        return layer.adjoint(bias_rule[kind](g, layer.bias), a_in)
    return rule


def _stabilise(z, epsilon):
    """z + epsilon * sign(z), with sign(0) = +1, so the division never blows up."""
    return z + epsilon * np.where(z >= 0, 1, -1).astype(z.dtype)


def linear_lrp_epsilon(epsilon=1e-6):
    """LRP-epsilon: R_in = a_in * W^T (R / (z + eps sign z)), z including the bias."""
    def rule(g, layer, a_in, at_image):
        s = g / _stabilise(layer.pre_activation(a_in), epsilon)
        return a_in * layer.adjoint(s, a_in)
    return rule


def linear_lrp_zplus(low, high):
    """LRP-z+ on hidden layers (positive weights only); the z^B rule on the image, bounded by [low, high].

    low and high are the preprocessed images of a black and a white picture (their per-channel values).
    """
    def rule(g, layer, a_in, at_image):
        w_pos, w_neg = np.maximum(layer.kernel, 0), np.minimum(layer.kernel, 0)
        if not at_image:
            z = layer.apply(a_in, w_pos)
            s = np.where(z > 0, g / np.where(z > 0, z, 1), 0)
            return a_in * layer.apply_adjoint(s, a_in, w_pos)
        lo, hi = np.broadcast_to(low, a_in.shape), np.broadcast_to(high, a_in.shape)
        z = layer.apply(a_in, layer.kernel) - layer.apply(lo, w_pos) - layer.apply(hi, w_neg)
        s = g / _stabilise(z, 1e-12)
        return (a_in * layer.adjoint(s, a_in) - lo * layer.apply_adjoint(s, a_in, w_pos)
                - hi * layer.apply_adjoint(s, a_in, w_neg))
    return rule


# ---------------------------------------------------------------- max-pool: g w.r.t. output -> input

def pool_switch(g, layer, a_in, switches):
    """Every value back to its window's argmax (gradient, DeconvNet, guided backprop, LRP): the adjoint."""
    return layer.adjoint(g, a_in, switches)


def pool_replicate(g, layer, a_in, switches):
    """Every value copied over its window (averaged where windows overlap)."""
    return layer.replicate(g, a_in)


def pool_min_replicate(g, layer, a_in, switches):
    """FBI's unpooling: min(forward pre-pool activation, replicated backward signal)."""
    return np.minimum(a_in, pool_replicate(g, layer, a_in, switches))


def pool_min_replicate_pooled(g, layer, a_in, switches):
    """FBI's unpooling with a_p read as the pooled value: min(replicated window max, replicated backward signal)."""
    pooled = pick_switches(a_in, switches)  # (N, Ho, Wo, C): each window's max
    return np.minimum(pool_replicate(pooled, layer, a_in, switches), pool_replicate(g, layer, a_in, switches))


POOL_RULES = {"switch": pool_switch, "replicate": pool_replicate, "min-replicate": pool_min_replicate}


# ---------------------------------------------------------------- average pooling: g w.r.t. output -> input

def average_adjoint(g, layer, a_in):
    """The transposed averaging: g / (cell count) over each window (gradient, DeconvNet, guided backprop, FBI)."""
    return layer.adjoint(g, a_in)


def average_min_replicate(g, layer, a_in):
    """FBI's max-pool reading at an average pool: min(forward input, the backward signal copied over each window)."""
    return np.minimum(a_in, layer.replicate(g, a_in))


def average_lrp_epsilon(epsilon=1e-6):
    """LRP-epsilon at an average pool: R_in = a_in * A^T (R / (z + eps sign z)), z the window means
    (relevance shared in proportion to each cell's share of its window's mean)."""
    def rule(g, layer, a_in):
        return a_in * layer.adjoint(g / _stabilise(layer.pre_activation(a_in), epsilon), a_in)
    return rule


def average_lrp_zplus(g, layer, a_in):
    """LRP-z+ at an average pool (all its weights are positive): R_in = a_in * A^T (R / z) where z > 0, else 0."""
    z = layer.pre_activation(a_in)
    return a_in * layer.adjoint(np.where(z > 0, g / np.where(z > 0, z, 1), 0), a_in)


AVERAGE_RULES = {"adjoint": average_adjoint, "min-replicate": average_min_replicate}


# ---------------------------------------------------------------- FBI's masks

def fbi_mask(tau=10.0, relative=False):
    """Keep the entries whose product with the forward activation exceeds tau, or (relative) tau times the
    image's largest positive product, max(0, max g*a); tau = -inf keeps everything, +inf nothing."""
    def rule(g, a):
        product = g * a
        kept = product > mask_threshold(product, tau, relative)
        if product.dtype == g.dtype:  # product is ours and no longer needed: reuse its memory
            return np.multiply(g, kept, out=product), kept
        return g * kept, kept
    return rule


def mask_threshold(product, tau, relative):
    """FBI's threshold for the products g * a (N, ...): tau, or tau * max(0, the image's largest product)."""
    if not relative or not np.isfinite(tau):  # an infinite tau stays what it is: never inf * 0 = NaN
        return tau
    largest = np.maximum(product.reshape(len(product), -1).max(axis=1), 0)  # (N,)
    return tau * largest.reshape(-1, *[1] * (product.ndim - 1))


TOPK_SUMS = {"signed": False, "absolute": True}


def topk_scores(g, a, score, total="signed"):
    """Each feature map's total score (N, C): of the backward signal, the forward activation, or their product;
    the sum of the values, or (total='absolute') of their absolute values."""
    values = {"backward": g, "forward": a, "product": g * a}[score]  # (N, H, W, C)
    return (np.abs(values) if TOPK_SUMS[total] else values).sum(axis=(1, 2))


def count_of(k, channels, name="k"):
    """k as a channel count: an int is a count, a float in (0, 1] a fraction of the channels, rounded half up and
    at least one: max(1, floor(k * C + 0.5)) in float64 (a rule a port writes in one line in any language;
    Python's round() would take k * C = 2.5 to 2)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, float, np.integer, np.floating)):
        raise InputError(f"{name} must be an int (a count) or a float in (0, 1] (a fraction), got {k!r}")
    if isinstance(k, (float, np.floating)):
        if not 0 < k <= 1:
            raise InputError(f"{name} as a fraction must be in (0, 1], got {k}")
        return max(1, math.floor(float(k) * channels + 0.5))
    if not 1 <= k:
        raise InputError(f"{name} as a count must be at least 1, got {k}")
    return min(int(k), channels)


def fbi_topk(k=0.5, score="backward", total="signed"):
    """Keep the k feature maps with the largest total score; zero the others. Ties: lower channel first."""
    def rule(g, a):
        n, c = g.shape[0], g.shape[-1]
        per_map = topk_scores(g, a, score, total)  # (N, C)
        best = np.argsort(-per_map, axis=1, kind="stable")[:, :count_of(k, c)]  # (N, count)
        keep = np.zeros((n, c), dtype=bool)  # (N, C)
        np.put_along_axis(keep, best, True, axis=1)
        kept = np.broadcast_to(keep[:, None, None, :], g.shape)  # (N, H, W, C)
        return g * kept, kept
    return rule
