"""FBI (Forward-Backward Interpretability): its options, and its start signal and rule table for a model.

Every point where the paper can be read two ways is an option; each option below carries the sentence of the
paper it reads (docs/methods.md discusses each reading). FBI walks back like DeconvNet (ReLU rule max(g, 0),
transposed convolutions), with its own start signal, bias and un-pooling rules, and with two kinds of
decisions placed at positions of the walk as hooks (`Decision`): the forward-backward mask at the input of
every conv and dense layer, and the top-k feature maps at the top conv layer's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fbi_ref.errors import InputError
from fbi_ref.methods import rules as R
from fbi_ref.methods.options import Option, number
from fbi_ref.methods.traversal import Rules, top_layer_index
from fbi_ref.nn.network import Activation, Affine, Conv2D, Dense, MaxPool2D


def _k(value, name, model, chosen):
    """k: an int count of maps, or a float fraction in (0, 1]."""
    R.count_of(value, 1, name)
    return value


def _tau(value, name, model, chosen):
    """tau: any number, -inf (keep everything) and inf included."""
    number(name, value, finite=False)
    return value


# FBI's options: every point where the paper can be read two ways. Choices are listed default first, in the
# order the benchmark's selection tries them (fbi_ref/evaluation/selection.py).
OPTIONS = (
    Option("k", 0.5, check=_k, help="top-k feature maps: an int count or a float fraction of the channels",
           paper="we use the top 50% filters to propagate the inverse of each layer"),
    Option("tau", 10.0, check=_tau, help="forward-backward mask threshold (-inf: no mask)",
           paper="We also use a thresholding value of 10.0 for the pointwise mask"),
    Option("tau_mode", "absolute", choices=("absolute", "relative"),
           help="tau as a value, or (ours) times each layer's largest product g * a"),
    Option("start", "maxmin", choices=("maxmin", "onehot", "logits", "contrast"),
           help="the start signal at the logits ('contrast', e_c - p, is ours)",
           paper="The adjoint of the softmax layer, ẑ(L), is defined point-wise such that ẑ_i = max(z(L)) for i = c, "
                 "min(z(L)) for i ≠ c."),
    Option("start_from", "logits", choices=("logits", "probs"),
           help="the z(L) that the 'maxmin' and 'logits' starts read: the logits or the softmax output"),
    Option("start_relu", False, choices=(False, True),
           help="the ReLU rule on the start signal too, before the top layer's adjoint",
           paper="The adjoint of the ReLU activation function is the ReLU itself"),
    Option("dense_bias", "subtract", choices=("subtract", "subtract-support", "ignore"),
           help="the dense layers' bias: subtracted (on every unit, or only where g != 0), or ignored",
           paper="the 'adjoint' of each fully connected layer is â(l−1) = (W(l))ᵀ(ẑ(l) − b(l))"),
    Option("conv_bias", "ignore", choices=("ignore", "subtract", "subtract-support"),
           help="the conv layers' bias: ignored (as DeconvNet), or subtracted as the dense layers'",
           paper="we compute the adjoint by convolving the backward activation with the flipped filter weights"),
    Option("unpool", "min-replicate", choices=("min-replicate", "replicate", "switch"),
           help="un-pooling: min(a_p, replicated g), replicated g, or DeconvNet's switches",
           paper="replicate (copy) its values across the domain of the max operator. Then, we evaluate entry-wise: "
                 "â_up = min(a_p, â_p)"),
    Option("unpool_min", "input", choices=("input", "pooled"),
           help="min-replicate's a_p: the pool's input, or its output copied over each window"),
    Option("mask_pools", False, choices=(False, True),
           help="the forward-backward mask at every max-pool's input too",
           paper="we successively retain a subset of pixel indices (or support) at the input of each layer"),
    Option("mask_dense", True, choices=(True, False),
           help="the forward-backward mask at the dense layers' inputs (False: ours)",
           paper="The backward information flow is now filtered using the forward activations"),
    Option("topk_score", "backward", choices=("backward", "forward", "product"),
           help="what a map's score sums: the backward signal, the forward activation, or their product",
           paper="The contribution of each map is determined as the total activation of the entire map."),
    Option("topk_sum", "signed", choices=("signed", "absolute"),
           help="a map's score sums the values, or their absolute values"),
    Option("topk_layers", "top", choices=("top", "all"),
           help="top-k at the last conv layer only, or at every conv layer",
           paper="Among many backward feature maps at the top convolutional layer, we keep only k of them"),
    Option("topk_position", "conv", choices=("conv", "pool"),
           help="top-k at the conv layer's activated output, or at the max-pool's output right after it"),
    Option("topk_order", "before-relu", choices=("before-relu", "after-relu"),
           help="top-k on the signal before or after the ReLU rule there"),
    Option("mask_image", True, choices=(True, False), help="the mask at the image input too"),
    # Layers the paper does not have (fine-tunes): our readings, each an option.
    Option("average_pool", "adjoint", choices=("adjoint", "min-replicate"),
           help="(ours) an average pool: its adjoint, as a linear layer, or min(a_p, replicated g), as un-pooling",
           applies=lambda model: any(layer.kind == "average" for layer in model.layers)),
    Option("affine_bias", "subtract", choices=("subtract", "subtract-support", "ignore"),
           help="(ours) an unfolded batch norm's shift, read as a dense layer's bias: subtracted, or ignored",
           applies=lambda model: any(isinstance(layer, Affine) for layer in model.layers)),
)
DEFAULTS = {option.name: option.default for option in OPTIONS}  # the paper's readings

# Presets: named sets of FBI's options, under the options given. 'model' is the model's own defaults
# (`Model.fbi_defaults`, chosen by the benchmark for the Shapes model); 'paper' is every option at the paper's
# reading (DEFAULTS), with the paper's tau = 10 absolute only on the ImageNet VGG the paper used: tau is a value
# of g * a, whose scale is VGG16's there and not on another model, where it empties the walk (a relative
# tau = 0.05, ours, keeps it scale-free).
PRESETS = ("model", "paper")
PAPER_TAU_ELSEWHERE = {"tau": 0.05, "tau_mode": "relative"}


def paper_scale(model):
    """True for the ImageNet VGG16 and VGG19 on caffe input: the models (and scale) of the paper's tau = 10."""
    return model.name in ("vgg16", "vgg19") and str(model.preprocessing) == "caffe" and model.num_classes == 1000


def preset_options(model, preset):
    """FBI's options of a preset on `model` (PRESETS): 'model' its own defaults, 'paper' every option at the
    paper's reading (tau relative, PAPER_TAU_ELSEWHERE, where the model's scale is not the paper's)."""
    if preset == "model":
        return dict(model.fbi_defaults)
    if preset == "paper":
        return {**DEFAULTS, **({} if paper_scale(model) else PAPER_TAU_ELSEWHERE)}
    raise InputError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {preset!r}")


def applicable(model, options):
    """The options that can change FBI's result on `model` (those for layers it does not have left out): what a
    record of the options used (the benchmark's results) lists."""
    records = {option.name: option for option in OPTIONS}
    return {name: value for name, value in options.items()
            if name not in records or records[name].applies is None or records[name].applies(model)}


STARTS = {"maxmin": R.start_maxmin, "onehot": R.start_onehot, "logits": R.start_logits, "contrast": R.start_log_probability}
# ('contrast', e_c - p, is ours, not the paper's: the gradient of log p_c, the gradient methods' log-probability start)
MIN_REPLICATE = {"input": R.pool_min_replicate, "pooled": R.pool_min_replicate_pooled}


@dataclass(frozen=True)
class Decision:
    """One of FBI's decisions at a position, a hook of the walk: the forward-backward mask or the top-k maps.

    rule(g, a) -> (g * kept, kept) decides; with relu_first (topk_order='after-relu') it decides on the signal
    after FBI's ReLU rule, and the ReLU rule itself stays where the walk applies it (the walk's ReLU rule of
    g * kept is that of g, times kept), so the position's record is the signal before its ReLU rule, as
    everywhere.
    """
    kind: str  # 'mask' | 'topk'
    rule: Callable
    relu_first: bool = False

    def scored(self, g):
        """The signal the decision is taken on."""
        return R.relu_deconvnet(g, None) if self.relu_first else g

    def __call__(self, g, a):
        """(g with the decision applied, the support kept)."""
        if not self.relu_first:
            return self.rule(g, a)
        kept = self.rule(self.scored(g), a)[1]
        return g * kept, kept


def start_signal(start, start_from):
    """FBI's start signal at the logits, read from the logits or (start_from='probs') from the softmax output."""
    rule = STARTS[start]
    if start_from == "logits" or start in ("onehot", "contrast"):  # these two do not read z(L)
        return rule

    def from_softmax(logits, probs, target):
        """The start rule with z(L) read as the softmax output."""
        return rule(probs, probs, target)
    return from_softmax


def rules(model, options):
    """FBI's start signal and rule table for `model`, with checked options (every option given): DeconvNet's ReLU
    rule, FBI's bias and un-pooling rules, and its decisions as hooks at the positions where they apply."""
    o = options
    top = model.layers[top_layer_index(model)].name
    hooks = {}  # position -> its decisions, in the order the walk takes them (the mask first)
    # the forward-backward mask, at the input of every conv layer walked back (and dense, max-pool layers)
    mask = Decision("mask", R.fbi_mask(float(o["tau"]), o["tau_mode"] == "relative"))  # a Python float: compared
    # in the products' dtype, whatever type tau was given as
    masked = (Conv2D,) + ((Dense,) if o["mask_dense"] else ()) + ((MaxPool2D,) if o["mask_pools"] else ())
    for layer in model.layers[:model.index(top) + 1]:
        below = model.input_position(layer.name)
        if isinstance(layer, masked) and (below != "input" or o["mask_image"]):
            hooks.setdefault(below, []).append(mask)
    # the top-k maps, at the top conv layer's activated output (or every conv layer's, or the max-pool's after it)
    positions = topk_positions(model, o["topk_layers"] == "all", o["topk_position"] == "pool")
    after_relu = o["topk_order"] == "after-relu"
    relu_first = {p for p in positions if after_relu and _relu_rule_at(model, p, top, o["start_relu"])}
    topk = R.fbi_topk(o["k"], o["topk_score"], o["topk_sum"])
    for position in positions:
        hooks.setdefault(position, []).append(Decision("topk", topk, position in relu_first))
    # FBI's ReLU rule where the walk applies none: on the start signal (start_relu), and at a max-pool whose output
    # top-k scored after the ReLU rule, before un-pooling (for a >= 0 and non-overlapping windows it commutes with
    # un-pooling: the ReLU rule of the conv below, taken early)
    relu = (lambda g: R.relu_deconvnet(g, None),)
    steps = {p: relu for p in relu_first if model.layer(p).kind == "pool"} | ({top: relu} if o["start_relu"] else {})
    unpool = MIN_REPLICATE[o["unpool_min"]] if o["unpool"] == "min-replicate" else R.POOL_RULES[o["unpool"]]
    table = Rules(relu=R.relu_deconvnet, linear=R.linear_fbi(o["dense_bias"], o["conv_bias"], o["affine_bias"]),
                  pool=unpool, average=R.AVERAGE_RULES[o["average_pool"]], hooks={position: tuple(decisions) for position, decisions in hooks.items()}, steps=steps)
    return start_signal(o["start"], o["start_from"]), table


def _relu_rule_at(model, position, top, start_relu):
    """True when the walk applies a ReLU rule at this top-k position: at a max-pool's output (taken before
    un-pooling), at the top layer with start_relu, and at any other layer that has a ReLU."""
    layer = model.layer(position)
    if layer.kind == "pool":
        return True
    return start_relu if position == top else getattr(layer, "activation", "linear") == "relu"


def activated_output(model, i):
    """The position of conv layer i's output after its ReLU: its own, or that of an Activation('relu') after it."""
    layer = model.layers[i]
    after = model.layers[i + 1] if i + 1 < len(model.layers) else None
    if layer.activation == "linear" and isinstance(after, Activation) and after.activation == "relu":
        return after.name
    return layer.name


def topk_positions(model, every_conv, at_pool=False):
    """Where FBI's top-k applies: the activated output of the top conv layer, or of every conv layer; with
    at_pool, each of these that a max-pool directly follows moves to that pool's output (InputError if none)."""
    positions = [activated_output(model, i) for i, layer in enumerate(model.layers) if isinstance(layer, Conv2D)]
    positions = positions if every_conv else positions[-1:]
    if not at_pool:
        return positions
    moved = [_pool_after(model, position) or position for position in positions]
    if moved == positions:
        which = "any conv layer" if every_conv else f"the top conv layer ({', '.join(positions) or 'none'})"
        raise InputError(f"topk_position='pool': no max-pool directly follows {which} of {model.name}")
    return moved


def _pool_after(model, position):
    """The name of the max-pool layer right after a position, or None."""
    i = model.index(position)
    after = model.layers[i + 1] if i + 1 < len(model.layers) else None
    return after.name if isinstance(after, MaxPool2D) else None
